package repo

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// fuzzRepo is an unencrypted repository without a backend: what a
// corrupted or forged unencrypted repository hands to the parsers
// reaches them unauthenticated.
func fuzzRepo(f *testing.F) *Repository {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		f.Fatal(err)
	}
	return &Repository{enc: enc, dec: dec, log: quiet()}
}

// seedFiles adds the files of the format 1 repository in testdata.
func seedFiles(f *testing.F, top string) {
	files, _ := filepath.Glob(filepath.Join("testdata", "v1", "plain", top, "*", "*"))
	more, _ := filepath.Glob(filepath.Join("testdata", "v1", "plain", top, "*"))
	for _, p := range append(files, more...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
}

// FuzzCheckPack: check --read-data of any pack reports, never panics.
func FuzzCheckPack(f *testing.F) {
	r := fuzzRepo(f)
	// Small packs as packer makes them (fuzzing is slow on large inputs).
	for _, chunks := range [][]string{{"a"}, {"astrolabe", "repository", "pack"}} {
		var data []byte
		var blobs []packBlob
		for _, c := range chunks {
			enc := r.encode(nil, []byte(c), []byte(chunkID([]byte(c))))
			blobs = append(blobs, packBlob{ID: chunkID([]byte(c)), Off: int64(len(data)), Len: int64(len(enc)), Raw: int64(len(c))})
			data = append(data, enc...)
		}
		hdr, _ := r.sealJSON(blobs, nil)
		data = append(data, hdr...)
		data = binary.LittleEndian.AppendUint32(data, uint32(len(hdr)))
		f.Add(data)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		used := []chunkRef{{ID: chunkID(nil), Pack: "p", POff: 3, PLen: 9, Len: 1}}
		r.checkPack("p", data, used, nil)
	})
}

// FuzzOpenIndex: index files and snapshot indexes, whatever they hold,
// are accepted only if everything reading them relies on holds.
func FuzzOpenIndex(f *testing.F) {
	r := fuzzRepo(f)
	seedFiles(f, "index")
	seedFiles(f, "snapshots")
	f.Fuzz(func(t *testing.T, b []byte) {
		if ix, err := r.parseIndexFile(b); err == nil {
			for _, p := range ix.Packs {
				if !validID(p.ID) {
					t.Fatalf("accepted pack ID %q", p.ID)
				}
			}
		}
		var idx snapshotIndex
		if r.openJSON(b, &idx, nil) != nil || idx.valid() != nil {
			return
		}
		// A valid index can be read as an image without a panic (the
		// chunks are not there: reads fail cleanly).
		for _, st := range []*stream{idx.Data, idx.Metadata} {
			if st == nil {
				continue
			}
			im := &streamImage{r: r, st: st, cache: newChunkCache(1 << 20)}
			im.Extents(context.Background(), 0, st.Size)
			for _, c := range st.Chunks {
				if !validID(c.Pack) {
					t.Fatalf("accepted pack ID %q", c.Pack)
				}
			}
		}
	})
}
