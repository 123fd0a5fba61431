package rest

import (
	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

func toAPIInfo(i pe.Info) api.ProtectedEntityInfo {
	out := api.ProtectedEntityInfo{
		Id: i.ID.String(), Name: i.Name, Size: i.Size, Created: i.Created,
		DataTransports:     toAPITransports(i.DataTransports),
		MetadataTransports: toAPITransports(i.MetadataTransports),
		CombinedTransports: toAPITransports(i.CombinedTransports),
		ComponentSpecs:     []api.ComponentSpec{},
	}
	if i.Details != nil {
		details := i.Details
		out.Details = &details
	}
	for _, c := range i.ComponentSpecs {
		spec := api.ComponentSpec{Id: c.ID.String()}
		if c.Server != "" {
			server := c.Server
			spec.Server = &server
		}
		out.ComponentSpecs = append(out.ComponentSpecs, spec)
	}
	return out
}

func toAPITransports(ts []pe.Transport) []api.DataTransport {
	out := []api.DataTransport{}
	for _, t := range ts {
		dt := api.DataTransport{TransportType: t.Type}
		if t.Params != nil {
			params := t.Params
			dt.Params = &params
		}
		out = append(out, dt)
	}
	return out
}

func toAPITask(i tasks.Info) api.TaskInfo {
	// In UTC, so that the times read alike whatever the appliance's zone.
	out := api.TaskInfo{
		Id: i.ID, Kind: i.Kind, Completed: i.Done(), Status: api.TaskInfoStatus(i.Status),
		Progress: i.Progress, StartedTime: i.Started.UTC(), StartedTimeNS: i.Started.UnixNano(),
	}
	if i.Details != "" {
		// A failed task's details are its error.
		d := redact.Message(i.Details)
		out.Details = &d
	}
	if i.Done() {
		f, ns := i.Finished.UTC(), i.Finished.UnixNano()
		out.FinishedTime, out.FinishedTimeNS = &f, &ns
	}
	if i.Result != nil {
		r := i.Result
		out.Result = &r
	}
	return out
}

func toAPIExport(e NBDExport) api.NBDExport {
	out := api.NBDExport{Id: e.ID.String(), Uri: e.URI, Writable: e.Writable}
	if !e.Target.IsZero() {
		t := e.Target.String()
		out.Target = &t
	}
	if e.Live {
		out.Live = &e.Live
	}
	return out
}

func toAPINFSExport(e NFSExport) api.NFSExport {
	return api.NFSExport{Id: e.ID.String(), Name: e.Name, Url: e.URL}
}

func toAPIInstantVM(v usecase.InstantVM) api.InstantVM {
	return api.InstantVM{Id: v.ID.String(), Name: v.VM.Name, Uuid: v.VM.UUID, Datastore: v.VM.Datastore.Name, Disks: v.Disks}
}

func toAPIMount(m Mount) api.Mount {
	allow := m.AllowOther
	return api.Mount{Id: m.ID, Path: m.Path, AllowOther: &allow}
}

// toParams turns the reference's parameter list into pe.Params: the outer
// key is a PE type, the inner list that type's parameters.
func toParams(list api.OperationParamList) pe.Params {
	out := pe.Params{}
	for _, item := range list {
		m := map[string]any{}
		if item.Value != nil {
			for _, kv := range *item.Value {
				m[kv.Key] = kv.Value
			}
		}
		out[item.Key] = m
	}
	return out
}
