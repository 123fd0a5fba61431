package overlay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Hydration fills an overlay's layer with the base's blocks in the
// background, the blocks clients read first, then the rest in order: a
// live restore. Give its Miss to the overlay as Options.OnMiss.
type Hydration struct {
	hot chan [2]int64
}

const (
	// hydrateRun is the blocks one fill reads from the base at once:
	// 4 MiB, a few of a repository's chunks.
	hydrateRun = 64
	// hydrateWorkers fill at once, so that a slow base (a repository in
	// S3) keeps a few reads in flight.
	hydrateWorkers = 4
	// hydrateSync is how often the layer and bitmap are saved, so that a
	// restart resumes close to where the fill stopped.
	hydrateSync = 2 * time.Second
)

// NewHydration returns a Hydration with no blocks asked for yet.
func NewHydration() *Hydration {
	return &Hydration{hot: make(chan [2]int64, 256)}
}

// Miss is Options.OnMiss: blocks a client read that the layer lacks are
// filled next. It never blocks a read: beyond what it can queue, the
// blocks wait for their turn in order.
func (h *Hydration) Miss(first, last int64) {
	select {
	case h.hot <- [2]int64{first, last}:
	default:
	}
}

// Run fills o until its layer holds every block, then saves it; or until
// ctx ends or a fill fails, saving what was filled. layerZero says the
// layer reads as zeros where never written (a new PE), so that the base's
// holes need no writes. progress counts bytes of the image filled.
func (h *Hydration) Run(ctx context.Context, o *Overlay, layerZero bool, progress pe.Progress) error {
	held, total := o.Written()
	if progress != nil {
		done := held * BlockSize
		if o.nblocks > 0 && o.has(o.nblocks-1) {
			_, n := o.blockRange(o.nblocks - 1)
			done -= BlockSize - n
		}
		progress.Start(o.Size())
		if done > 0 {
			progress.Add(done)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex // guards cursor and saved
		cursor int64
		saved  = time.Now()
		errs   = make([]error, hydrateWorkers)
		wg     sync.WaitGroup
	)
	// next is the range a worker fills next: blocks read by clients
	// first, then the first missing block after the last one taken.
	next := func() (first, last int64, ok bool) {
		select {
		case r := <-h.hot:
			return r[0], r[1], true
		default:
		}
		mu.Lock()
		defer mu.Unlock()
		b := o.NextMissing(cursor)
		if b < 0 {
			return 0, 0, false
		}
		cursor = b + hydrateRun
		return b, b + hydrateRun - 1, true
	}
	for w := range hydrateWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				first, last, ok := next()
				if !ok {
					return
				}
				added, _, err := o.Fill(ctx, first, last, layerZero)
				if progress != nil && added > 0 {
					progress.Add(added)
				}
				if err != nil {
					errs[w] = err
					cancel()
					return
				}
				mu.Lock()
				due := time.Since(saved) >= hydrateSync
				if due {
					saved = time.Now()
				}
				mu.Unlock()
				if due {
					if err := o.Sync(); err != nil {
						errs[w] = err
						cancel()
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	serr := o.Sync()
	if err := errors.Join(errs...); err != nil {
		return errors.Join(err, serr)
	}
	if serr != nil {
		return serr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Workers stop when no block is missing after the cursor, and every
	// block before it was in a range a worker filled without error.
	if held, _ = o.Written(); held != total {
		return fmt.Errorf("overlay %s: %d of %d blocks filled when all should be", o.dir, held, total)
	}
	return nil
}
