package pe

import (
	"context"
	"os"
)

// BackingFiler is offered by images whose bytes are held by local files:
// the whole image (a disk snapshot's image file) or a member of it (a file
// of an fs snapshot's tree, at its TOC offset). A server can then hand the
// file to the kernel (FUSE passthrough) instead of copying its bytes.
type BackingFiler interface {
	// OpenBacking opens, read-only, a file whose bytes [0, size) are the
	// image's [off, off+size). It returns an error matching ErrNotSupported
	// when no single file holds exactly that range.
	OpenBacking(ctx context.Context, off, size int64) (*os.File, error)
}
