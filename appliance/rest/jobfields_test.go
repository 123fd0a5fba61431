package rest

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/jobs"
)

// The API's job is jobs.json's, passed through JSON: a field jobs.json
// has and the spec lacks would be accepted by createJob and silently
// dropped from every answer.
func TestAPIJobHasEveryJobField(t *testing.T) {
	for _, c := range []struct{ ours, spec reflect.Type }{
		{reflect.TypeOf(jobs.Job{}), reflect.TypeOf(api.Job{})},
		{reflect.TypeOf(jobs.Repository{}), reflect.TypeOf(api.JobRepository{})},
		{reflect.TypeOf(jobs.Keep{}), reflect.TypeOf(api.JobKeep{})},
	} {
		ours, spec := jsonNames(c.ours), jsonNames(c.spec)
		for _, n := range ours {
			if !slices.Contains(spec, n) {
				t.Errorf("%s has %q, the spec's %s has not (api/openapi.yaml)", c.ours, n, c.spec)
			}
		}
		for _, n := range spec {
			if !slices.Contains(ours, n) {
				t.Errorf("the spec's %s has %q, %s has not", c.spec, n, c.ours)
			}
		}
	}
}

func jsonNames(t reflect.Type) []string {
	var names []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	return names
}
