package pe

import "context"

// Remover is offered by live PEs that can be removed. Callers use it to
// undo a copy they made and could not hand over (an NBD restore target
// whose export failed to start), never to delete what a user made.
type Remover interface {
	// Remove deletes the live PE. It refuses (ErrExists) while the PE has
	// snapshots: they would be left without their PE.
	Remove(ctx context.Context) error
}
