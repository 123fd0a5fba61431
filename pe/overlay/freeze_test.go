package overlay

import (
	"bytes"
	"errors"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestOverlayFreeze: writers hammer an overlay; after Freeze returns no
// write lands (two reads a moment apart are equal and each writer's
// accepted writes are all in it), writes and zeroes fail with ErrFrozen;
// Thaw lets them in again.
func TestOverlayFreeze(t *testing.T) {
	base, _ := baseImage(t, 8*mib, 2*mib, 1*mib)
	o, err := Create(filepath.Join(t.TempDir(), "ov"), base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()

	var wg sync.WaitGroup
	var stop atomic.Bool
	var accepted, refused atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(w + 1)}, 3000)
			for i := 0; i < 100000 && !stop.Load(); i++ {
				off := int64((w*2+i%2)*mib + (i*4099)%(mib-3000))
				_, err := o.WriteAt(buf, off)
				switch {
				case err == nil:
					accepted.Add(1)
				case errors.Is(err, ErrFrozen):
					refused.Add(1)
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	for accepted.Load() < 200 {
		runtime.Gosched()
	}
	o.Freeze()
	first := readAll(t, o)
	if err := o.Zero(0, BlockSize, true); !errors.Is(err, ErrFrozen) {
		t.Errorf("Zero of a frozen overlay: %v", err)
	}
	second := readAll(t, o)
	stop.Store(true)
	wg.Wait()
	if !bytes.Equal(first, second) || !bytes.Equal(first, readAll(t, o)) {
		t.Fatal("writes landed in a frozen overlay")
	}
	t.Logf("%d writes before the freeze, %d refused after it", accepted.Load(), refused.Load())

	o.Thaw()
	if _, err := o.WriteAt([]byte("thawed"), 7*mib); err != nil {
		t.Fatalf("write after Thaw: %v", err)
	}
	got := make([]byte, 6)
	if _, err := o.ReadAt(got, 7*mib); err != nil || string(got) != "thawed" {
		t.Fatalf("read after Thaw: %q %v", got, err)
	}
}
