// Package api is the appliance's REST API: openapi.yaml is the contract, and
// astrolabe.gen.go (types, the server interface and the client) is
// generated from it with `go generate ./api`. CI checks the generated code
// is fresh (make generated) and that Redocly's and Spectral's linters find
// nothing in the spec (make lint-api, linters pinned in lint-tools.env).
package api

//go:generate go run github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2 -config oapi-codegen.yaml openapi.yaml
