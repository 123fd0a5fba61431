package pe

import (
	"context"
	"io"
)

// WritableImage is the data of a live PE opened for writing in place: a
// restore target that block protocols (NBD) write into directly. WriteAt,
// like ReadAt, must be safe for concurrent use.
type WritableImage interface {
	Image
	io.WriterAt
	// Sync makes every completed write durable.
	Sync() error
	// Zero makes [off, off+length) read as zeros without writing them;
	// with punch the range may also be deallocated. It returns an error
	// matching errors.ErrUnsupported when it can only be done by writing
	// zeros, so that callers can choose how.
	Zero(off, length int64, punch bool) error
}

// DataWriter is offered by live PEs whose data can be written in place.
// Snapshots never are: they are points in time.
type DataWriter interface {
	WritableData(ctx context.Context) (WritableImage, error)
}

// InPlaceType is offered by type managers whose live PEs are DataWriters,
// Fillers and Removers: a live restore makes one, fills it in place and, given
// up, removes it. Asking before the PE is made leaves nothing behind for
// a type that could not.
type InPlaceType interface {
	WritesInPlace() bool
}

// Filler is offered by the live PEs of InPlaceTypes. A live restore marks
// its target unfinished before it writes into it and done once the data
// is whole; the mark is kept with the PE, so it outlasts a crash. An
// unfinished PE refuses snapshots (ErrIncomplete): they would hold holes
// where the restore had not reached. A successful update (Copy with
// Update, Overwrite) makes the data whole and clears the mark.
type Filler interface {
	StartFilling(ctx context.Context) error
	DoneFilling(ctx context.Context) error
}
