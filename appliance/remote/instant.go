package remote

import (
	"context"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// InstantVMs lists the appliance's instant VMs.
func (m *Manager) InstantVMs(ctx context.Context) ([]api.InstantVM, error) {
	r, err := m.c.ListInstantVMsWithResponse(ctx)
	if err != nil {
		return nil, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return nil, apiError(r.StatusCode(), r.Body)
	}
	return *r.JSON200, nil
}

// StartInstantVM boots VM snapshot id on vSphere from the appliance's NFS
// datastore.
func (m *Manager) StartInstantVM(ctx context.Context, id pe.ID) (api.InstantVM, error) {
	r, err := m.c.StartInstantVMWithResponse(ctx, api.StartInstantVMJSONRequestBody{Id: id.String()})
	if err != nil {
		return api.InstantVM{}, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return api.InstantVM{}, apiError(r.StatusCode(), r.Body)
	}
	return *r.JSON200, nil
}

// MigrateInstantVM moves instant VM name onto datastore ("" for the vm
// type's restore datastore) and waits for the task.
func (m *Manager) MigrateInstantVM(ctx context.Context, name, datastore string) error {
	body := api.MigrateInstantVMJSONRequestBody{}
	if datastore != "" {
		body.Datastore = &datastore
	}
	r, err := m.c.MigrateInstantVMWithResponse(ctx, name, body)
	if err != nil {
		return fmt.Errorf("appliance: %w", err)
	}
	if r.JSON202 == nil {
		return apiError(r.StatusCode(), r.Body)
	}
	_, err = m.WaitTask(ctx, r.JSON202.TaskID)
	return err
}

// StopInstantVM stops instant VM name and throws it away.
func (m *Manager) StopInstantVM(ctx context.Context, name string) error {
	r, err := m.c.StopInstantVMWithResponse(ctx, name)
	if err != nil {
		return fmt.Errorf("appliance: %w", err)
	}
	if r.StatusCode() != 204 {
		return apiError(r.StatusCode(), r.Body)
	}
	return nil
}
