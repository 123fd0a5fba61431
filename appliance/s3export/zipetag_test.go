package s3export

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// renamingManager gives snapshots the name last stored, if any, in their
// info, as pe/vm does for a VM renamed after its snapshots were taken.
type renamingManager struct {
	pe.Manager
	name *atomic.Pointer[string]
}

func (m renamingManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	p, err := m.Manager.Get(ctx, id)
	name := m.name.Load()
	if err != nil || name == nil {
		return p, err
	}
	return renamedPE{p, *name}, nil
}

type renamedPE struct {
	pe.ProtectedEntity
	name string
}

func (p renamedPE) Info(ctx context.Context) (pe.Info, error) {
	info, err := p.ProtectedEntity.Info(ctx)
	info.Name = p.name
	return info, err
}

// otherMetadataPE has other metadata than the snapshot it wraps.
type otherMetadataPE struct{ pe.ProtectedEntity }

func (otherMetadataPE) Metadata(context.Context) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("other metadata")), nil
}

// The ETag of a snapshot's zip follows the zip's bytes: a rename of the
// PE (its info in the zip) gives the zip another ETag, a resumed download
// under the old one gets no piece of the new zip, the cached zip is not
// served under the new ETag, and after a restart the same inputs give the
// same ETag and the same bytes.
func TestZipETagFollowsItsInputs(t *testing.T) {
	f := newFixture(t, 0)
	ctx := context.Background()
	var name atomic.Pointer[string]
	f.m = renamingManager{f.m, &name}
	_, endpoint := f.start(t, 0)
	key := "/disk/" + f.diskSnap.String() + ".zip"
	get := func(endpoint, method string, header map[string]string) (*http.Response, []byte) {
		t.Helper()
		resp, body := doAt(t, endpoint, method, key, "", header)
		if resp.StatusCode >= 300 && resp.StatusCode != 412 {
			t.Fatalf("%s %s %v: %d %s", method, key, header, resp.StatusCode, body)
		}
		return resp, body
	}
	nameIn := func(zip []byte) string {
		t.Helper()
		p, err := pe.OpenZip(ctx, bytes.NewReader(zip), int64(len(zip)))
		if err != nil {
			t.Fatalf("the zip served: %v", err)
		}
		info, err := p.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Name
	}

	head, _ := get(endpoint, http.MethodHead, nil)
	etag1 := head.Header.Get("ETag")
	resp, zip1 := get(endpoint, http.MethodGet, nil)
	if resp.Header.Get("ETag") != etag1 || !strings.HasSuffix(etag1, `-1"`) {
		t.Fatalf("GET: ETag %s, HEAD said %s", resp.Header.Get("ETag"), etag1)
	}
	original := nameIn(zip1)

	renamed := "renamed after its snapshot"
	name.Store(&renamed)
	head, _ = get(endpoint, http.MethodHead, nil)
	etag2 := head.Header.Get("ETag")
	if etag2 == etag1 {
		t.Fatalf("the info in the zip changed (name %q to %q), its ETag did not: %s", original, renamed, etag1)
	}
	if resp, _ := get(endpoint, http.MethodGet, map[string]string{"If-Match": etag1}); resp.StatusCode != 412 {
		t.Errorf("GET If-Match the old ETag: %d, want 412", resp.StatusCode)
	}
	// A download resumed with If-Range gets the whole new zip, not its
	// tail after the old zip's head.
	resp, zip2 := get(endpoint, http.MethodGet, map[string]string{"Range": "bytes=100-", "If-Range": etag1})
	if resp.StatusCode != 200 || resp.Header.Get("ETag") != etag2 {
		t.Fatalf("GET If-Range the old ETag: %d, ETag %s, want 200 and %s", resp.StatusCode, resp.Header.Get("ETag"), etag2)
	}
	if got := nameIn(zip2); got != renamed {
		t.Errorf("the zip served under the new ETag holds the name %q, want %q", got, renamed)
	}
	resp, tail := get(endpoint, http.MethodGet, map[string]string{"Range": "bytes=100-", "If-Range": etag2})
	if resp.StatusCode != 206 || !bytes.Equal(tail, zip2[100:]) {
		t.Errorf("GET If-Range the new ETag: %d, %d bytes, want 206 and the zip's last %d", resp.StatusCode, len(tail), len(zip2)-100)
	}

	_, endpoint = f.start(t, 0)
	head, _ = get(endpoint, http.MethodHead, nil)
	if got := head.Header.Get("ETag"); got != etag2 {
		t.Errorf("after a restart: ETag %s, was %s", got, etag2)
	}
	resp, zip3 := get(endpoint, http.MethodGet, map[string]string{"If-Match": etag2})
	if resp.StatusCode != 200 || !bytes.Equal(zip3, zip2) {
		t.Errorf("after a restart, the zip under the same ETag: %d, %d bytes, differs from before: %v", resp.StatusCode, len(zip3), !bytes.Equal(zip3, zip2))
	}

	// What writes the zip, and the metadata it holds, are in the ETag.
	p, err := f.m.Get(ctx, f.diskSnap)
	if err != nil {
		t.Fatal(err)
	}
	src, err := readZipSource(ctx, p, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := src.etag(zipWriter()); got != etag2 {
		t.Errorf("ETag from the zip's inputs %s, served %s", got, etag2)
	}
	if src.etag("astrolabe zip writer 2") == etag2 {
		t.Error("another zip writer, the same ETag")
	}
	other, err := readZipSource(ctx, otherMetadataPE{p}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if other.etag(zipWriter()) == etag2 {
		t.Error("other metadata, the same ETag")
	}
}
