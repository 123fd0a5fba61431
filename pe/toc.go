package pe

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"
)

// TOCEntry describes one member of a tar image: enough to list it and to
// read a regular file's bytes with ReadAt(Offset, Size) without walking the
// tar from its start.
type TOCEntry struct {
	// Name is the slash-separated path relative to the tree's root, without
	// leading "./" or "/"; directories have no trailing slash.
	Name     string            `json:"name"`
	Mode     fs.FileMode       `json:"mode"` // type bits and permissions
	Size     int64             `json:"size"` // content bytes (regular files)
	ModTime  time.Time         `json:"mtime"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Linkname string            `json:"linkname,omitempty"` // symlink target or hard-link name
	HardLink bool              `json:"hardlink,omitempty"`
	Xattrs   map[string]string `json:"xattrs,omitempty"`
	// Devmajor and Devminor number a character or block device.
	Devmajor int64 `json:"devmajor,omitempty"`
	Devminor int64 `json:"devminor,omitempty"`
	// Header is the offset of the member's first header block, Offset that
	// of its content.
	Header int64 `json:"header"`
	Offset int64 `json:"offset"`
}

// TableOfContents is offered by images that hold a tar stream (fs PEs).
type TableOfContents interface {
	// TOC returns the members in tar order.
	TOC(ctx context.Context) ([]TOCEntry, error)
}

// maxTOCEntries bounds what ScanTar accepts from untrusted input.
const maxTOCEntries = 50_000_000

// ScanTar builds the table of contents of a tar stream by reading it once.
// It works on any tar (the image of an fs PE from a zip or a repository);
// fs PEs that lay out their own tar answer TOC without reading data.
func ScanTar(ctx context.Context, r io.Reader) ([]TOCEntry, error) {
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	var toc []TOCEntry
	// tr.Next skips the previous member's content and padding before it
	// reads a header, so the header starts where that content ends, rounded
	// up to the 512-byte block, not where the reader stands now.
	var header int64
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return toc, nil
		}
		if err != nil {
			return nil, fmt.Errorf("tar member %d at offset %d: %w", len(toc), header, err)
		}
		if len(toc) >= maxTOCEntries {
			return nil, fmt.Errorf("tar: more than %d members", maxTOCEntries)
		}
		// tr.Next has consumed the header blocks (and any PAX/GNU long-name
		// records); the content starts where the reader is now.
		e := TOCEntry{
			Name:     CleanTarName(h.Name),
			Mode:     h.FileInfo().Mode(),
			ModTime:  h.ModTime,
			UID:      h.Uid,
			GID:      h.Gid,
			Linkname: h.Linkname,
			HardLink: h.Typeflag == tar.TypeLink,
			Devmajor: h.Devmajor,
			Devminor: h.Devminor,
			Header:   header,
			Offset:   cr.n,
		}
		if h.Typeflag == tar.TypeReg {
			e.Size = h.Size
		}
		for k, v := range h.PAXRecords {
			const prefix = "SCHILY.xattr."
			if len(k) > len(prefix) && k[:len(prefix)] == prefix {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[k[len(prefix):]] = v
			}
		}
		toc = append(toc, e)
		header = e.Offset + (h.Size+511)&^511
	}
}

// CleanTarName strips the "./" and "/" prefixes and the trailing "/" that
// tar writers put on names.
func CleanTarName(name string) string {
	for len(name) > 0 && (name[0] == '/' || len(name) >= 2 && name[:2] == "./") {
		if name[0] == '/' {
			name = name[1:]
		} else {
			name = name[2:]
		}
	}
	for len(name) > 0 && name[len(name)-1] == '/' {
		name = name[:len(name)-1]
	}
	return name
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
