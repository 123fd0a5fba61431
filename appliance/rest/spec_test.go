package rest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// specChecker is an http.RoundTripper that holds every answer of the
// server against api/openapi.yaml: the status must be one the operation
// declares (or its default), the body must match the declared schema. So
// each test of this package that talks to the API also shows that the
// spec and the server agree. Requests to no path of the spec (the tests of
// unknown endpoints) are not checked.
type specChecker struct {
	base   http.RoundTripper
	router routers.Router

	mu       sync.Mutex
	checked  int
	failures []string
	// operations are the operation IDs of the answers checked.
	operations map[string]bool
}

func newSpecChecker(t *testing.T) *specChecker {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../../api/openapi.yaml")
	if err != nil {
		t.Fatalf("load the spec: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the spec is not valid OpenAPI: %v", err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("route the spec: %v", err)
	}
	return &specChecker{base: http.DefaultTransport, router: router, operations: map[string]bool{}}
}

func (c *specChecker) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return resp, err
	}
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		return resp, nil // a path or method the spec has not
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	verr := openapi3filter.ValidateResponse(req.Context(), in)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checked++
	c.operations[route.Operation.OperationID] = true
	if verr != nil && len(c.failures) < 20 {
		c.failures = append(c.failures, fmt.Sprintf("%s %s: %d %.300s: %v", req.Method, req.URL.RequestURI(), resp.StatusCode, body, verr))
	}
	return resp, nil
}

// missing returns those of ids no answer checked was of.
func (c *specChecker) missing(ids ...string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, id := range ids {
		if !c.operations[id] {
			out = append(out, id)
		}
	}
	return out
}

// report fails t with the answers that broke the spec.
func (c *specChecker) report(t *testing.T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.failures {
		t.Errorf("answer not as api/openapi.yaml says: %s", f)
	}
	t.Logf("%d answers checked against api/openapi.yaml", c.checked)
}
