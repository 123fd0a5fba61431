// Package ziptest gives tests of restores from untrusted input a PE as
// the zip an upload would carry.
package ziptest

import (
	"bytes"
	"context"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Of writes p as a PE zip in memory and opens it again: an untrusted PE,
// and the zip's size.
func Of(t testing.TB, p pe.ProtectedEntity) (z pe.ProtectedEntity, size int) {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	if err := pe.WriteZip(ctx, &buf, p, nil); err != nil {
		t.Fatal(err)
	}
	z, err := pe.OpenZip(ctx, bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if !pe.Untrusted(z) {
		t.Fatal("a zip PE is not untrusted")
	}
	return z, buf.Len()
}
