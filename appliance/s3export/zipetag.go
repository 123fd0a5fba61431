package s3export

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// zipSource is what a snapshot's zip is built from, read once. The zip's
// ETag is a hash of it, and the zip is built from it rather than from a
// second read of the PE, so the bytes served under an ETag are the ones
// it names even when the PE's info changes in between (a vSphere VM
// renamed: its snapshots' info carries the current name).
//
// The data is not hashed: a snapshot's data never changes, and the ID and
// size in the info name it. ID and Data come from the snapshot itself.
type zipSource struct {
	pe.ProtectedEntity
	info        pe.Info
	infoJSON    []byte // as the zip holds it
	metadata    []byte
	hasMetadata bool
	components  []*zipSource
}

// maxZipSourceDepth bounds component nesting, as the zip reader does.
const maxZipSourceDepth = 16

// readZipSource reads p's info and metadata and those of its components.
func readZipSource(ctx context.Context, p pe.ProtectedEntity, depth int) (*zipSource, error) {
	if depth > maxZipSourceDepth {
		return nil, fmt.Errorf("zip %s: components nested deeper than %d", p.ID(), maxZipSourceDepth)
	}
	info, err := p.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("zip %s: info: %w", p.ID(), err)
	}
	// pe.WriteZip stores json.Marshal of the info.
	infoJSON, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("zip %s: info: %w", p.ID(), err)
	}
	s := &zipSource{ProtectedEntity: p, info: info, infoJSON: infoJSON}
	s.metadata, err = readMetadata(ctx, p)
	switch {
	case err == nil:
		s.hasMetadata = true
	case !errors.Is(err, pe.ErrNoMetadata):
		return nil, fmt.Errorf("zip %s: metadata: %w", p.ID(), err)
	}
	comps, err := p.Components(ctx)
	if err != nil {
		return nil, fmt.Errorf("zip %s: components: %w", p.ID(), err)
	}
	for _, c := range comps {
		cs, err := readZipSource(ctx, c, depth+1)
		if err != nil {
			return nil, err
		}
		s.components = append(s.components, cs)
	}
	return s, nil
}

func (s *zipSource) Info(context.Context) (pe.Info, error) { return s.info, nil }

func (s *zipSource) Metadata(context.Context) (io.ReadCloser, error) {
	if !s.hasMetadata {
		return nil, pe.ErrNoMetadata
	}
	return io.NopCloser(bytes.NewReader(s.metadata)), nil
}

func (s *zipSource) Components(context.Context) ([]pe.ProtectedEntity, error) {
	out := make([]pe.ProtectedEntity, len(s.components))
	for i, c := range s.components {
		out[i] = c
	}
	return out, nil
}

// etag is the zip's ETag: a hash of its inputs and of writer, the code
// that writes it (zipWriter). It has the form of a multipart upload's
// ETag, as the zip's MD5 is not known before the zip is built.
func (s *zipSource) etag(writer string) string {
	h := sha256.New()
	writeField(h, []byte(writer))
	s.hash(h)
	return `"` + hex.EncodeToString(h.Sum(nil)[:16]) + `-1"`
}

func (s *zipSource) hash(h hash.Hash) {
	writeField(h, []byte(s.ID().String()))
	writeField(h, s.infoJSON)
	if s.hasMetadata {
		md := sha256.Sum256(s.metadata)
		writeField(h, md[:])
	} else {
		writeField(h, nil)
	}
	writeField(h, binary.BigEndian.AppendUint64(nil, uint64(len(s.components))))
	for _, c := range s.components {
		c.hash(h)
	}
}

// writeField writes b with its length, so that fields cannot run into
// each other.
func writeField(h hash.Hash, b []byte) {
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
	h.Write(b)
}

// zipWriter names what decides a zip's bytes besides its inputs: the
// layout's writer version, the Go release (archive/zip) and the deflate
// module's version.
func zipWriter() string {
	flate := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path != "github.com/klauspost/compress" {
				continue
			}
			if d.Replace != nil {
				d = d.Replace
			}
			flate = d.Path + "@" + d.Version + " " + d.Sum
		}
	}
	return fmt.Sprintf("astrolabe zip writer %d; %s; %s", pe.ZipWriterVersion, runtime.Version(), flate)
}
