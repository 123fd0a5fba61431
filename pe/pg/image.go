package pg

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/fileimage"
)

// image is a snapshot's base backup: its tar archive with the table of
// contents recorded when it was taken, so that the repository chunks it
// by file and FUSE browses it without reading it first.
type image struct {
	*fileimage.Image
	toc []pe.TOCEntry
}

var (
	_ pe.Image           = (*image)(nil)
	_ pe.TableOfContents = (*image)(nil)
)

// TOC implements pe.TableOfContents.
func (im *image) TOC(ctx context.Context) ([]pe.TOCEntry, error) { return im.toc, nil }

// openImage opens the base backup in the snapshot directory dir.
func openImage(dir string) (*image, error) {
	b, err := os.ReadFile(filepath.Join(dir, tocFile))
	if err != nil {
		return nil, err
	}
	var toc []pe.TOCEntry
	if err := json.Unmarshal(b, &toc); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, tocFile), err)
	}
	f, err := os.Open(filepath.Join(dir, archiveFile))
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &image{Image: fileimage.New(f, st.Size(), true), toc: toc}, nil
}
