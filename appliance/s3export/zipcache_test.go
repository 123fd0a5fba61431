package s3export

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// zipPE is a snapshot of no data and no metadata. Info, the first thing
// a zip build asks for, counts the builds of its ID and waits for gate,
// if set.
type zipPE struct {
	pe.ProtectedEntity // nil: what WriteZip does not call
	id                 pe.ID
	builds             *buildCount
	gate               chan struct{}
}

// buildCount counts the zip builds of one ID in progress, and their peak.
type buildCount struct {
	started        chan struct{} // gets one value per build that starts
	mu             sync.Mutex
	now, peak, all int
}

func newBuildCount() *buildCount { return &buildCount{started: make(chan struct{}, 1024)} }

func (b *buildCount) enter() {
	b.mu.Lock()
	b.now++
	b.all++
	b.peak = max(b.peak, b.now)
	b.mu.Unlock()
	b.started <- struct{}{}
}

func (b *buildCount) exit() {
	b.mu.Lock()
	b.now--
	b.mu.Unlock()
}

func (p zipPE) ID() pe.ID { return p.id }

func (p zipPE) Info(ctx context.Context) (pe.Info, error) {
	p.builds.enter()
	defer p.builds.exit()
	if p.gate != nil {
		<-p.gate
	}
	return pe.Info{ID: p.id, Name: p.id.String()}, nil
}

func (zipPE) Metadata(context.Context) (io.ReadCloser, error)          { return nil, pe.ErrNoMetadata }
func (zipPE) Data(context.Context) (pe.Image, error)                   { return nil, pe.ErrNoData }
func (zipPE) Components(context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }

// everyManager has every snapshot: trim keeps zips by age only.
type everyManager struct{ pe.Manager }

func (everyManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	return zipPE{id: id}, nil
}

func zipID(t *testing.T, i int) pe.ID {
	t.Helper()
	id, err := pe.ParseID(fmt.Sprintf("disk:d%d:snap%d", i, i))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A GET building the zip of B keeps B's lock while a trim (from the GET
// of another snapshot) removes B's zip: a third GET of B waits for the
// build in progress instead of starting another, and every GET gets B's
// zip.
func TestZipCacheTrimDuringBuild(t *testing.T) {
	z, err := newZipCache(t.TempDir(), everyManager{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := zipID(t, 0)
	builds, gate := newBuildCount(), make(chan struct{})
	type result struct {
		c   cachedZip
		err error
	}
	results := make(chan result, 2)
	get := func() {
		c, err := z.get(ctx, zipPE{id: b, builds: builds, gate: gate}, `"b"`)
		results <- result{c, err}
	}
	go get()
	select {
	case <-builds.started:
	case <-time.After(time.Minute):
		t.Fatal("the build of B did not start")
	}
	// What trim does when B's zip is among the oldest.
	z.remove(b)
	z.mu.Lock()
	held := z.locks[b] != nil
	z.mu.Unlock()
	if !held {
		t.Error("remove dropped the lock of B while a GET holds it")
	}
	go get()
	close(gate)
	var sizes []int64
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("GET of B: %v", r.err)
		}
		if _, err := r.c.f.ReadAt(make([]byte, 1), r.c.size-1); err != nil {
			t.Errorf("zip of B unreadable: %v", err)
		}
		r.c.f.Close()
		sizes = append(sizes, r.c.size)
	}
	if builds.peak != 1 {
		t.Errorf("%d builds of B ran at once", builds.peak)
	}
	if sizes[0] != sizes[1] {
		t.Errorf("sizes differ: %v", sizes)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if len(z.locks) != 0 {
		t.Errorf("%d locks left with no GET running", len(z.locks))
	}
}

// Concurrent GETs of more snapshots than the cache keeps, so that trims
// run all the time: every GET gets a readable zip, and no snapshot's zip
// is built by two GETs at once.
func TestZipCacheConcurrentGets(t *testing.T) {
	z, err := newZipCache(t.TempDir(), everyManager{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const ids, workers, rounds = maxCachedZips + 8, 8, 40
	pes := make([]zipPE, ids)
	for i := range pes {
		pes[i] = zipPE{id: zipID(t, i), builds: newBuildCount()}
	}
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
		first  sync.Once
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				// Neighbours ask for the same snapshots at the same time.
				p := pes[(w/2+r*3)%ids]
				c, err := z.get(ctx, p, `"`+p.id.String()+`"`)
				if err == nil {
					_, err = c.f.ReadAt(make([]byte, 1), c.size-1)
					c.f.Close()
				}
				if err != nil {
					failed.Add(1)
					first.Do(func() { t.Errorf("GET of %s: %v", p.id, err) })
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, p := range pes {
		if p.builds.peak > 1 {
			t.Errorf("%d builds of %s ran at once", p.builds.peak, p.id)
		}
		total += p.builds.all
	}
	t.Logf("%d GETs, %d failed, %d builds", workers*rounds, failed.Load(), total)
	z.mu.Lock()
	defer z.mu.Unlock()
	if len(z.locks) != 0 {
		t.Errorf("%d locks left with no GET running", len(z.locks))
	}
}
