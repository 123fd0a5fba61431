package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The stress tests of issue 14: concurrent backups through the REST API
// of one appliance while a mount and an NBD export read the repository,
// and two appliances sharing one S3 bucket with prune and kill -9 among
// them. They assert outcomes only: every backup that reports success is
// in the repository and restores byte-exact, nothing else fails, and
// check finds no problem. Sizes are small so that a run takes about a
// minute on two cores; every loop is bounded in count and time.

// stressSeed makes a run reproducible: ASTROLABE_STRESS_SEED, else the clock.
func stressSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ASTROLABE_STRESS_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("ASTROLABE_STRESS_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with ASTROLABE_STRESS_SEED=%d)", seed, seed)
	return seed
}

// gen makes random content: ints and bytes from one seeded source.
type gen struct {
	mu  sync.Mutex
	src *rand.ChaCha8
	rnd *rand.Rand
}

func newGen(seed uint64) *gen {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	src := rand.NewChaCha8(s)
	return &gen{src: src, rnd: rand.New(src)}
}

func (g *gen) intN(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rnd.IntN(n)
}

func (g *gen) bytes(n int) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := make([]byte, n)
	g.src.Read(b)
	return b
}

func (g *gen) delay(upTo time.Duration) time.Duration {
	return time.Duration(g.intN(int(upTo/time.Millisecond)+1)) * time.Millisecond
}

// stressPE is a live PE of a config directory the tests write into.
type stressPE struct {
	id   string // disk:<name>.img or fs:<name>
	path string
}

func (p stressPE) disk() bool { return strings.HasPrefix(p.id, "disk:") }

// content is what a PE held when it was snapshotted.
type content struct {
	digest string            // disk: sha256 of the image; fs: treeDigest
	files  map[string]string // fs: regular file → sha256
}

func fileSHA(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func contentOf(t *testing.T, p stressPE) content {
	t.Helper()
	if p.disk() {
		d, err := fileSHA(p.path)
		if err != nil {
			t.Fatal(err)
		}
		return content{digest: d}
	}
	c := content{digest: treeDigest(t, p.path), files: map[string]string{}}
	err := filepath.WalkDir(p.path, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(p.path, path)
		c.files[rel], err = fileSHA(path)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

// stressData is the content all PEs of a test draw from, so that some
// chunks are shared between PEs and dedup matters.
type stressData struct {
	g      *gen
	shared []byte // 1 MiB in every PE
	mtime  time.Time
}

// writeDisk makes a sparse disk image: random data, the shared MiB at
// 1 MiB, a hole at the end.
func (d *stressData) writeDisk(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < size-mib; off += mib {
		b := d.g.bytes(mib)
		if off == mib {
			b = d.shared
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

// mutateDisk changes a few ranges of a disk image; now and then it
// copies the shared MiB or a whole chunk of another image in, aligned,
// so that the changed chunk is one the repository has.
func (d *stressData) mutateDisk(t *testing.T, path string, others []string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	chunks := int(fi.Size() / mib)
	for range 1 + d.g.intN(3) {
		n := 1 + d.g.intN(128*kib)
		off := int64(d.g.intN(int(fi.Size()) - n))
		if _, err := f.WriteAt(d.g.bytes(n), off); err != nil {
			t.Fatal(err)
		}
	}
	switch d.g.intN(4) {
	case 0:
		f.WriteAt(d.shared, int64(d.g.intN(chunks))*mib)
	case 1:
		if len(others) > 0 {
			b, err := os.ReadFile(others[d.g.intN(len(others))])
			if err != nil {
				t.Fatal(err)
			}
			c := int64(d.g.intN(chunks)) * mib
			f.WriteAt(b[c:c+mib], c)
		}
	}
}

// writeTree makes an fs PE: random files, one holding half the shared
// MiB, a subdirectory and a symlink.
func (d *stressData) writeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub", "deeper"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "common.bin"), d.shared[:512*kib], 0o644))
	for i := range 6 {
		must(os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.bin", i)), d.g.bytes(d.g.intN(600*kib)), 0o644))
	}
	must(os.WriteFile(filepath.Join(dir, "sub", "deeper", "note.txt"), []byte("a file two levels down\n"), 0o600))
	must(os.Symlink("sub/deeper/note.txt", filepath.Join(dir, "link")))
	d.settle(t, dir)
}

// mutateTree changes one file in place, adds one and removes one; now
// and then it copies a file of another tree in.
func (d *stressData) mutateTree(t *testing.T, dir string, others []string) {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "f*.bin"))
	if len(names) > 0 {
		name := names[d.g.intN(len(names))]
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 {
			at := d.g.intN(len(b))
			copy(b[at:], d.g.bytes(min(len(b)-at, 4*kib)))
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(names) > 3 {
		os.Remove(names[d.g.intN(len(names))])
	}
	added := filepath.Join(dir, fmt.Sprintf("f%d.bin", 100+d.g.intN(1000)))
	if d.g.intN(3) == 0 && len(others) > 0 {
		src, _ := filepath.Glob(filepath.Join(others[d.g.intN(len(others))], "f*.bin"))
		if len(src) > 0 {
			b, _ := os.ReadFile(src[d.g.intN(len(src))])
			os.WriteFile(added, b, 0o644)
		}
	} else {
		os.WriteFile(added, d.g.bytes(d.g.intN(400*kib)), 0o644)
	}
	d.settle(t, dir)
}

// settle gives every file of a tree one modification time, so that two
// appliances' copies of a tree are equal to the byte.
func (d *stressData) settle(t *testing.T, dir string) {
	t.Helper()
	if d.mtime.IsZero() {
		return
	}
	var paths []string
	filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err == nil && de.Type()&fs.ModeSymlink == 0 {
			paths = append(paths, path)
		}
		return err
	})
	// Deepest first: setting a directory's time before its entries'
	// would not stick.
	slices.Reverse(paths)
	for _, p := range paths {
		if err := os.Chtimes(p, d.mtime, d.mtime); err != nil {
			t.Fatal(err)
		}
	}
}

// mutate changes a PE; others are paths of PEs of the same type.
func (d *stressData) mutate(t *testing.T, p stressPE, all []stressPE) {
	t.Helper()
	var others []string
	for _, o := range all {
		if o.disk() == p.disk() && o.id != p.id {
			others = append(others, o.path)
		}
	}
	if p.disk() {
		d.mutateDisk(t, p.path, others)
	} else {
		d.mutateTree(t, p.path, others)
	}
}

// taskInfo is a task as GET /v1/astrolabe/tasks/{id} returns it.
type taskInfo struct {
	ID        string            `json:"id"`
	Status    string            `json:"status"`
	Details   string            `json:"details"`
	Completed bool              `json:"completed"`
	Result    map[string]string `json:"result"`
}

// request calls the appliance's API from any goroutine: it returns
// errors instead of failing the test.
func (a *appliance) request(ctx context.Context, method, path, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, a.base()+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.info["token"])
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// runTask starts a task with a POST to path and waits for it to end.
// An error means the task could not be started or followed (the
// appliance is gone); a task that failed comes back with its status.
func (a *appliance) runTask(ctx context.Context, path, body string) (taskInfo, error) {
	status, b, err := a.request(ctx, "POST", path, body)
	if err != nil {
		return taskInfo{}, err
	}
	if status != http.StatusAccepted {
		return taskInfo{}, fmt.Errorf("POST %s %s: %d %s", path, body, status, b)
	}
	var started struct{ TaskID string }
	if err := json.Unmarshal(b, &started); err != nil || started.TaskID == "" {
		return taskInfo{}, fmt.Errorf("POST %s: %q: %v", path, b, err)
	}
	for timeouts := 0; ; {
		status, b, err := a.request(ctx, "GET", "/v1/astrolabe/tasks/"+started.TaskID, "")
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil && timeouts < 3 {
			// A loaded machine: the task goes on, ask again.
			timeouts++
			continue
		}
		if err != nil {
			return taskInfo{}, err
		}
		var ti taskInfo
		if status != http.StatusOK || json.Unmarshal(b, &ti) != nil {
			return taskInfo{}, fmt.Errorf("task %s: %d %s", started.TaskID, status, b)
		}
		if ti.Completed {
			return ti, nil
		}
		select {
		case <-ctx.Done():
			return ti, fmt.Errorf("task %s (%s %s) did not end: %w", started.TaskID, path, body, ctx.Err())
		case <-time.After(30 * time.Millisecond):
		}
	}
}

// backup backs a live PE up through the API; it returns the repository
// snapshot's ID.
func (a *appliance) backup(ctx context.Context, id string) (string, taskInfo, error) {
	ti, err := a.runTask(ctx, "/v1/appliance/repository/backups", `{"id":"`+id+`"}`)
	if err == nil && ti.Status != "success" {
		err = fmt.Errorf("backup %s: task %s", id, ti.Status)
	}
	if err != nil {
		return "", ti, err
	}
	return ti.Result["id"], ti, nil
}

// repoSnapshots lists the repository's snapshots through the API.
func (a *appliance) repoSnapshots(ctx context.Context) ([]string, error) {
	status, b, err := a.request(ctx, "GET", "/v1/appliance/repository/snapshots", "")
	if err != nil {
		return nil, err
	}
	var l struct {
		List      []string
		Truncated bool
	}
	if status != http.StatusOK || json.Unmarshal(b, &l) != nil || l.Truncated {
		return nil, fmt.Errorf("repository snapshots: %d %.300s", status, b)
	}
	return l.List, nil
}

// restore restores a repository snapshot through the API as a new PE;
// it returns the new PE's ID.
func (a *appliance) restore(ctx context.Context, snap string) (string, error) {
	ti, err := a.runTask(ctx, "/v1/appliance/repository/restores", `{"id":"`+snap+`"}`)
	if err != nil {
		return "", err
	}
	if ti.Status != "success" {
		return "", fmt.Errorf("restore %s: task %s: %s", snap, ti.Status, ti.Details)
	}
	return ti.Result["id"], nil
}

// restoreAll restores snapshots through the API, a few at once, and
// compares each restored PE of cfg with what was backed up; it removes
// them after.
func restoreAll(ctx context.Context, t *testing.T, a *appliance, cfg string, snaps []backedUp) {
	t.Helper()
	type restored struct {
		b   backedUp
		id  string
		err error
	}
	jobs, results := make(chan backedUp), make(chan restored)
	var workers sync.WaitGroup
	for range 4 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for b := range jobs {
				id, err := a.restore(ctx, b.snap)
				results <- restored{b, id, err}
			}
		}()
	}
	go func() {
		for _, b := range snaps {
			jobs <- b
		}
		close(jobs)
		workers.Wait()
		close(results)
	}()
	failed := 0
	for r := range results {
		if r.err != nil {
			failed++
			t.Errorf("restore %s: %v", r.b.snap, r.err)
			continue
		}
		if !checkRestored(t, cfg, r.b, r.id) {
			failed++
		}
	}
	t.Logf("restored %d snapshots, %d failed", len(snaps), failed)
}

// checkRestored compares PE id of cfg, restored from b, with what b
// backed up, and removes it.
func checkRestored(t *testing.T, cfg string, b backedUp, id string) bool {
	t.Helper()
	typ, name, _ := strings.Cut(id, ":")
	path := filepath.Join(cfg, typ, name)
	defer os.RemoveAll(path)
	if got := contentOf(t, stressPE{id: id, path: path}); got.digest != b.want.digest {
		t.Errorf("snapshot %s restores as %s, which differs from what was backed up:\n%s\nwant:\n%s", b.snap, id, got.digest, b.want.digest)
		return false
	}
	return true
}

// errorList collects errors from goroutines; the test reports them.
type errorList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorList) add(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *errorList) report(t *testing.T, what string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, err := range l.errs {
		if i == 10 {
			t.Errorf("%s: %d more errors", what, len(l.errs)-i)
			break
		}
		t.Errorf("%s: %v", what, err)
	}
}

// backedUp is a committed repository snapshot and what it holds.
type backedUp struct {
	snap string
	pe   stressPE
	want content
}

// snapPath is a repository snapshot's directory in a repository mount.
func snapPath(mnt, snap string) string {
	p := strings.Split(snap, ":")
	return filepath.Join(mnt, p[0], p[0]+":"+p[1], "snapshots", p[2])
}

// readThroughMount reads a snapshot's data (disk) or one of its files
// (fs) through a repository mount and compares it with what was backed up.
func readThroughMount(mnt string, b backedUp, g *gen) error {
	dir := snapPath(mnt, b.snap)
	if b.pe.disk() {
		got, err := fileSHA(filepath.Join(dir, "data"))
		if err != nil {
			return fmt.Errorf("mount: %w", err)
		}
		if got != b.want.digest {
			return fmt.Errorf("mount: %s/data differs from what was backed up", dir)
		}
		return nil
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range b.want.files {
			if !yield(n) {
				return
			}
		}
	})
	name := names[g.intN(len(names))]
	got, err := fileSHA(filepath.Join(dir, "files", name))
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if got != b.want.files[name] {
		return fmt.Errorf("mount: %s/files/%s differs from what was backed up", dir, name)
	}
	return nil
}

// startMount runs 'astrolabe mount [args] mnt' until the test ends; its
// Stderr is a *bytes.Buffer.
func startMount(t *testing.T, cfg, mnt string, args ...string) *exec.Cmd {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatal("/dev/fuse missing: run as root with the fuse module loaded")
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// A bound, not a timing: a killed mount shows as "Transport endpoint is
	// not connected" in what reads it, so leave a busy machine room.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, astrolabeBin, append(append([]string{"--config", cfg, "mount"}, args...), mnt)...)
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		if t.Failed() {
			t.Logf("mount %s: stderr:\n%s", strings.Join(args, " "), stderr.String())
		}
	})
	if sc := bufio.NewScanner(stdout); !sc.Scan() || !strings.HasPrefix(sc.Text(), "mounted at") {
		cmd.Wait()
		t.Fatalf("mount %s did not start: %s", strings.Join(args, " "), stderr.String())
	}
	return cmd
}

// nbdSHA reads a whole NBD export with nbdcopy and hashes it.
func nbdSHA(ctx context.Context, uri string) (string, error) {
	cmd := exec.CommandContext(ctx, "nbdcopy", uri, "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	h := sha256.New()
	_, cerr := io.Copy(h, out)
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("nbdcopy %s: %v: %s", uri, err, stderr.String())
	}
	if cerr != nil {
		return "", cerr
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// TestConcurrentBackupsStress starts backups of 8 disk and fs PEs
// together through the REST API of one appliance, with random delays,
// round after round, while a FUSE mount and an NBD export of the same
// repository read snapshots backed up earlier. Every backup must
// succeed, every snapshot restore byte-exact and check --read-data find
// nothing.
func TestConcurrentBackupsStress(t *testing.T) {
	needNBDTools(t)
	const (
		rounds   = 20
		diskSize = 16 * mib
	)
	// For the rounds; a slower machine runs fewer. startServe gives the
	// appliance 3 minutes in all.
	deadline := time.Now().Add(80 * time.Second)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("stress\n"), 0o600)
	repoArgs := []string{"--repo", filepath.Join(dir, "repo"), "--password-file", pw}
	mustRun(t, cfg, append([]string{"repo", "init"}, repoArgs...)...)

	seed := stressSeed(t)
	g, jitter := newGen(seed), newGen(seed+1) // content; delays and picks
	data := &stressData{g: g, shared: g.bytes(mib)}
	var pes []stressPE
	for i := range 4 {
		name := fmt.Sprintf("d%d.img", i)
		p := stressPE{id: "disk:" + name, path: filepath.Join(cfg, "disk", name)}
		data.writeDisk(t, p.path, diskSize)
		pes = append(pes, p)
	}
	for i := range 4 {
		name := fmt.Sprintf("t%d", i)
		p := stressPE{id: "fs:" + name, path: filepath.Join(cfg, "fs", name)}
		data.writeTree(t, p.path)
		pes = append(pes, p)
	}

	a := startServe(t, cfg, repoArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	var (
		mu        sync.Mutex
		committed []backedUp // in the order their rounds ended
		readErrs  errorList
		reads     [2]atomic.Int64 // mount, NBD
		stop      = make(chan struct{})
		readers   sync.WaitGroup
	)
	var backupErrs errorList
	failures := 0
	round := func(r int) {
		wants := make([]content, len(pes))
		for i, p := range pes {
			if r > 0 {
				data.mutate(t, p, pes)
			}
			wants[i] = contentOf(t, p)
		}
		var wg sync.WaitGroup
		done := make([]backedUp, len(pes))
		errs := make([]error, len(pes))
		for i, p := range pes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(jitter.delay(150 * time.Millisecond))
				snap, ti, err := a.backup(ctx, p.id)
				if err != nil {
					errs[i] = fmt.Errorf("round %d: %w: %s", r, err, ti.Details)
					return
				}
				done[i] = backedUp{snap: snap, pe: p, want: wants[i]}
			}()
		}
		// A restore of an earlier snapshot in the same process, meanwhile.
		var restoring backedUp
		var restored string
		var restoreErr error
		if len(committed) > 0 {
			restoring = committed[jitter.intN(len(committed))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(jitter.delay(150 * time.Millisecond))
				restored, restoreErr = a.restore(ctx, restoring.snap)
			}()
		}
		wg.Wait()
		switch {
		case restoreErr != nil:
			t.Errorf("round %d: restore during backups: %v", r, restoreErr)
		case restored != "":
			checkRestored(t, cfg, restoring, restored)
		}
		mu.Lock()
		defer mu.Unlock()
		for i := range pes {
			if errs[i] != nil {
				failures++
				backupErrs.add(fmt.Errorf("backup of %s: %w", pes[i].id, errs[i]))
				continue
			}
			committed = append(committed, done[i])
		}
	}

	// Round 0 gives the readers snapshots to read.
	round(0)
	first := slices.Clone(committed)
	mnt := filepath.Join(dir, "mnt")
	mount := startMount(t, cfg, mnt, repoArgs...)
	var exported []backedUp
	var exportArgs []string
	for _, b := range first {
		if b.pe.disk() {
			exported = append(exported, b)
			exportArgs = append(exportArgs, b.snap)
		}
	}
	if len(exported) == 0 || len(first) < 2 {
		backupErrs.report(t, "round 0")
		t.Fatal("round 0 left too few snapshots to read")
	}
	nbdSrv := startNBD(t, cfg, len(exported), append(repoArgs, exportArgs...)...)

	// The readers: each pass reads one snapshot, until the rounds end.
	const maxReads = 5000
	readers.Add(2)
	go func() {
		defer readers.Done()
		for range maxReads {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			b := committed[jitter.intN(len(committed))]
			mu.Unlock()
			if err := readThroughMount(mnt, b, jitter); err != nil {
				readErrs.add(err)
			}
			reads[0].Add(1)
		}
	}()
	go func() {
		defer readers.Done()
		for n := range maxReads {
			select {
			case <-stop:
				return
			default:
			}
			i := n % len(exported)
			got, err := nbdSHA(ctx, nbdSrv.uri(i))
			if err == nil && got != exported[i].want.digest {
				err = fmt.Errorf("NBD export %s differs from what was backed up", nbdSrv.uri(i))
			}
			if err != nil {
				readErrs.add(err)
			}
			reads[1].Add(1)
		}
	}()

	ran := 1
	var stalled [2]bool
	for r := 1; r < rounds && time.Now().Before(deadline); r++ {
		before := [2]int64{reads[0].Load(), reads[1].Load()}
		round(r)
		ran++
		// Both readers read during every round (or the round was too
		// short for a read to end: then they read into the next one).
		for i := range reads {
			for w := 0; !stalled[i] && reads[i].Load() == before[i] && w < 600; w++ {
				time.Sleep(50 * time.Millisecond)
			}
			if !stalled[i] && reads[i].Load() == before[i] {
				t.Logf("round %d: reader %d has not finished a read for 30 s: not waiting for it any more", r, i)
				stalled[i] = true
			}
		}
	}
	close(stop)
	readersDone := make(chan struct{})
	go func() { readers.Wait(); close(readersDone) }()
	select {
	case <-readersDone:
	case <-time.After(time.Minute):
		t.Errorf("a read of the repository hangs: %d reads through the mount, %d over NBD", reads[0].Load(), reads[1].Load())
	}
	backupErrs.report(t, "concurrent backups")
	readErrs.report(t, "reading the repository during backups")
	if reads[0].Load() == 0 || reads[1].Load() == 0 {
		t.Errorf("reads during the backups: %d through the mount, %d over NBD; want some of each", reads[0].Load(), reads[1].Load())
	}
	t.Logf("%d rounds, %d snapshots committed, %d backups failed; %d mount reads, %d NBD reads", ran, len(committed), failures, reads[0].Load(), reads[1].Load())
	if ran < rounds {
		t.Logf("stopped after %d of %d rounds: the machine is slow", ran, rounds)
	}

	// The repository holds exactly the snapshots that were reported
	// backed up, and each restores as it was.
	listed, err := a.repoSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, b := range committed {
		want = append(want, b.snap)
	}
	sort.Strings(listed)
	sort.Strings(want)
	if !slices.Equal(listed, want) {
		t.Errorf("the repository lists %d snapshots, %d were backed up:\nlisted %v\nbacked up %v", len(listed), len(want), listed, want)
	}
	restoreStart := time.Now()
	restoreAll(ctx, t, a, cfg, committed)
	t.Logf("restores took %s", time.Since(restoreStart).Round(time.Millisecond))

	a.stop()
	mount.Process.Signal(syscall.SIGTERM)
	if err := mount.Wait(); err != nil {
		t.Errorf("mount --repo after SIGTERM: %v", err)
	}
	nbdSrv.stop(syscall.SIGTERM)
	r := mustRun(t, cfg, append([]string{"repo", "check", "--read-data"}, repoArgs...)...)
	if !strings.Contains(r.stdout, "no problems found") {
		t.Errorf("repo check --read-data: %s%s", r.stdout, r.stderr)
	}
}

// versitygw is a versitygw S3 server on 127.0.0.1, started with
// scripts/s3-server.sh.
type versitygw struct {
	endpoint string // host:port
	dir      string // what it serves: buckets are directories
}

func startVersitygw(t *testing.T) versitygw {
	t.Helper()
	if _, err := exec.LookPath("versitygw"); err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		if _, err := os.Stat(filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")); err != nil {
			t.Fatal("versitygw missing: run scripts/s3-server.sh install (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
		}
	}
	dir := t.TempDir()
	script, _ := filepath.Abs(filepath.Join("..", "..", "scripts", "s3-server.sh"))
	out, err := exec.Command("bash", script, "start", dir).Output()
	t.Cleanup(func() { exec.Command("bash", script, "stop", dir).Run() })
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
		t.Fatalf("s3-server.sh start: %v\n%s", err, log)
	}
	// export AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. S3_ENDPOINT=.. S3_PID=..
	env := map[string]string{}
	for _, kv := range strings.Fields(strings.TrimPrefix(strings.TrimSpace(string(out)), "export ")) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["S3_ENDPOINT"] == "" {
		t.Fatalf("s3-server.sh start printed %q", out)
	}
	// The appliances and the CLI take the keys from the environment.
	t.Setenv("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
	t.Setenv("AWS_SECRET_ACCESS_KEY", env["AWS_SECRET_ACCESS_KEY"])
	os.Unsetenv("AWS_CA_BUNDLE")
	return versitygw{endpoint: env["S3_ENDPOINT"], dir: filepath.Join(dir, "data")}
}

// packBytes is the size of the packs of the repository at prefix in
// bucket: the bytes backups stored.
func (s versitygw) packBytes(t *testing.T, bucket, prefix string) int64 {
	t.Helper()
	var n int64
	root := filepath.Join(s.dir, bucket, prefix, "data")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if rel, _ := filepath.Rel(root, path); d.Type().IsRegular() && len(rel) == 2+1+64 {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cliRun is an astrolabe command run in the background.
type cliRun struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

func startCLI(ctx context.Context, cfg string, args ...string) (*cliRun, error) {
	c := &cliRun{cmd: exec.CommandContext(ctx, astrolabeBin, append([]string{"--config", cfg}, args...)...), done: make(chan struct{})}
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { c.err = c.cmd.Wait(); close(c.done) }()
	return c, nil
}

// killed reports whether the command died of SIGKILL.
func (c *cliRun) killed() bool {
	var ee *exec.ExitError
	if errors.As(c.err, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
	}
	return false
}

// kill9 kills an appliance with SIGKILL and reaps it, so that its
// locks belong to a dead process.
func (a *appliance) kill9() {
	a.cmd.Process.Kill()
	a.cmd.Wait()
}

// TestTwoAppliancesOneBucket runs two appliances on one repository in a
// versitygw bucket. What the first stored, the second does not store
// again; prune from a third process, with forget, during their backups
// removes nothing a committed snapshot needs; kill -9 of any of them
// leaves a repository that check passes, and the backup run again
// completes. At the end every committed snapshot restores byte-exact.
func TestTwoAppliancesOneBucket(t *testing.T) {
	const (
		rounds   = 8
		diskSize = 8 * mib
	)
	s3 := startVersitygw(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("two appliances\n"), 0o600)
	const bucket, prefix = "backups", "astrolabe"
	repoArgs := []string{"--repo", "s3+http://" + s3.endpoint + "/" + bucket + "/" + prefix, "--password-file", pw}
	cfgs := []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}
	for _, cfg := range cfgs {
		mustRun(t, cfg, "init", cfg)
	}
	mustRun(t, cfgs[0], append([]string{"repo", "init"}, repoArgs...)...)

	seed := stressSeed(t)
	g, jitter := newGen(seed), newGen(seed+1)
	// One modification time for every file, so that the two copies of a
	// tree are the same to the byte, metadata too.
	data := &stressData{g: g, shared: g.bytes(mib), mtime: time.Now().Add(time.Hour).Truncate(time.Second)}
	// newPE makes a PE in appliance i's config directory.
	newPE := func(i int, id string) stressPE {
		typ, name, _ := strings.Cut(id, ":")
		p := stressPE{id: id, path: filepath.Join(cfgs[i], typ, name)}
		if p.disk() {
			data.writeDisk(t, p.path, diskSize)
		} else {
			data.writeTree(t, p.path)
		}
		return p
	}
	// twin copies a PE of appliance 0 into appliance 1's config directory.
	twin := func(p stressPE) stressPE {
		q := stressPE{id: p.id, path: strings.Replace(p.path, cfgs[0], cfgs[1], 1)}
		os.RemoveAll(q.path)
		runTool(t, "cp", "-a", p.path, q.path)
		if !p.disk() {
			data.settle(t, q.path)
		}
		return q
	}

	apps := []*appliance{startServe(t, cfgs[0], repoArgs...), startServe(t, cfgs[1], repoArgs...)}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	var (
		committed []backedUp
		forgotten = map[string]bool{}
	)
	mustBackup := func(i int, p stressPE) string {
		t.Helper()
		want := contentOf(t, p)
		snap, ti, err := apps[i].backup(ctx, p.id)
		if err != nil {
			t.Fatalf("appliance %d: %v: %s", i, err, ti.Details)
		}
		committed = append(committed, backedUp{snap: snap, pe: p, want: want})
		return snap
	}
	// dedup backs p up on the first appliance, then its twin on the
	// second: the second stores (almost) nothing new.
	dedup := func(p stressPE) {
		t.Helper()
		q := twin(p)
		before := s3.packBytes(t, bucket, prefix)
		mustBackup(0, p)
		first := s3.packBytes(t, bucket, prefix) - before
		mustBackup(1, q)
		second := s3.packBytes(t, bucket, prefix) - before - first
		t.Logf("%s: the first appliance stored %d bytes, the second %d", p.id, first, second)
		if first == 0 || second > first/50 {
			t.Errorf("%s: the first appliance stored %d bytes, the second %d more: want (almost) nothing", p.id, first, second)
		}
	}
	// Both appliances were started before either backed up: the second
	// sees what the first uploaded since it opened the repository.
	dedup(newPE(0, "disk:same.img"))
	dedup(newPE(0, "fs:same"))

	// What prune removed is stored again, not deduplicated against
	// packs that are gone, by appliances that have been running since
	// before the prune.
	rev := newPE(0, "disk:rev.img")
	revB := twin(rev)
	for i, p := range []stressPE{rev, revB} {
		snap := mustBackup(i, p)
		mustRun(t, cfgs[0], append([]string{"repo", "forget"}, append(repoArgs, snap)...)...)
		forgotten[snap] = true
	}
	pruned := mustRun(t, cfgs[0], append([]string{"repo", "prune"}, repoArgs...)...)
	if !strings.HasPrefix(pruned.stdout, "removed ") || strings.HasPrefix(pruned.stdout, "removed 0 ") {
		t.Errorf("prune after forgetting %s: %s, want packs removed", rev.id, pruned.stdout)
	}
	before := s3.packBytes(t, bucket, prefix)
	mustBackup(0, rev)
	// All but the shared MiB (stored with same.img) and the hole at the end.
	unique := int64(diskSize - 2*mib)
	if stored := s3.packBytes(t, bucket, prefix) - before; stored < unique {
		t.Errorf("%s backed up again after prune stored %d bytes: what prune removed must be stored again (%d bytes)", rev.id, stored, unique)
	}
	mustBackup(1, revB)

	// Rounds of concurrent backups on both, a forget and a prune from a
	// third process, and kill -9 of one of the three.
	pes := [][]stressPE{
		{newPE(0, "disk:a0.img"), newPE(0, "disk:a1.img"), newPE(0, "fs:ta")},
		{newPE(1, "disk:b0.img"), newPE(1, "disk:b1.img"), newPE(1, "fs:tb")},
	}
	const none, prune = -1, 2
	victims := []int{0, 1, prune, 0, 1, prune, none, none}
	rand.New(rand.NewPCG(seed, 2)).Shuffle(len(victims), func(i, j int) { victims[i], victims[j] = victims[j], victims[i] })
	deadline := time.Now().Add(90 * time.Second)
	var unexpected errorList
	stats := map[string]int{}
	for r := 0; r < rounds && time.Now().Before(deadline); r++ {
		wants := map[string]content{}
		for i := range pes {
			for _, p := range pes[i] {
				if r > 0 {
					data.mutate(t, p, pes[i])
				}
				wants[p.id] = contentOf(t, p)
			}
		}
		victim := victims[r]
		// A committed snapshot of an earlier round for prune to free.
		var forget string
		for _, k := range jitter.rnd.Perm(len(committed)) {
			if !forgotten[committed[k].snap] {
				forget = committed[k].snap
				break
			}
		}
		type outcome struct {
			app  int
			pe   stressPE
			snap string
			err  error
		}
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			outcomes []outcome
			pruneRun *cliRun
			forgot   bool
		)
		for i := range pes {
			for _, p := range pes[i] {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(jitter.delay(300 * time.Millisecond))
					snap, ti, err := apps[i].backup(ctx, p.id)
					if err != nil && ti.Details != "" {
						err = fmt.Errorf("%w: %s", err, ti.Details)
					}
					mu.Lock()
					outcomes = append(outcomes, outcome{i, p, snap, err})
					mu.Unlock()
				}()
			}
		}
		if forget != "" {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(jitter.delay(300 * time.Millisecond))
				f, err := startCLI(ctx, cfgs[0], append([]string{"repo", "forget"}, append(repoArgs, forget)...)...)
				if err != nil {
					unexpected.add(err)
					return
				}
				<-f.done
				if f.err != nil {
					unexpected.add(fmt.Errorf("round %d: repo forget %s: %v: %s", r, forget, f.err, f.stderr.String()))
				}
				forgot = f.err == nil
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Mostly during the backups (refused: locked), now and then
			// after; the one to be killed early, to be killed at work.
			wait := 800 * time.Millisecond
			if victim == prune {
				wait = 100 * time.Millisecond
			}
			time.Sleep(jitter.delay(wait))
			p, err := startCLI(ctx, cfgs[0], append([]string{"repo", "prune"}, repoArgs...)...)
			if err != nil {
				unexpected.add(err)
				return
			}
			if victim == prune {
				select {
				case <-p.done:
				case <-time.After(jitter.delay(300 * time.Millisecond)):
					p.cmd.Process.Kill()
				}
			}
			<-p.done
			pruneRun = p
		}()
		if victim == 0 || victim == 1 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(jitter.delay(600 * time.Millisecond))
				apps[victim].kill9()
			}()
		}
		wg.Wait()

		if forgot {
			forgotten[forget] = true
		}
		switch {
		case pruneRun == nil:
		case pruneRun.err == nil:
			stats["prune ran"]++
			t.Logf("round %d: prune: %s", r, strings.TrimSpace(pruneRun.stdout.String()))
		case pruneRun.killed():
			stats["prune killed"]++
		case strings.Contains(pruneRun.stderr.String(), "repository is locked"):
			stats["prune refused: locked"]++
		default:
			unexpected.add(fmt.Errorf("round %d: repo prune: %v: %s", r, pruneRun.err, pruneRun.stderr.String()))
		}
		if victim == 0 || victim == 1 {
			stats[fmt.Sprintf("appliance %d killed", victim)]++
			apps[victim] = startServe(t, cfgs[victim], repoArgs...)
		}

		// The repository is sound after every round, whoever died.
		if res := astrolabe(t, cfgs[0], append([]string{"repo", "check"}, repoArgs...)...); res.code != 0 {
			t.Errorf("round %d (victim %d): repo check: exit %d\n%s%s", r, victim, res.code, res.stdout, res.stderr)
		}
		// Backups that did not complete (their appliance died, or prune
		// held the lock) complete when run again.
		for _, o := range outcomes {
			if o.err == nil {
				stats["backup ok"]++
				committed = append(committed, backedUp{snap: o.snap, pe: o.pe, want: wants[o.pe.id]})
				continue
			}
			switch {
			case strings.Contains(o.err.Error(), "repository is locked"):
				stats["backup refused: locked"]++
			case o.app == victim:
				stats["backup lost: appliance killed"]++
			default:
				unexpected.add(fmt.Errorf("round %d: appliance %d: %v", r, o.app, o.err))
			}
			snap, ti, err := apps[o.app].backup(ctx, o.pe.id)
			if err != nil {
				unexpected.add(fmt.Errorf("round %d: appliance %d: backup run again: %v: %s", r, o.app, err, ti.Details))
				continue
			}
			committed = append(committed, backedUp{snap: snap, pe: o.pe, want: wants[o.pe.id]})
		}
		// A backup an appliance committed just before it was killed is
		// in the repository without the test knowing its ID: it holds
		// this round's content.
		listed, err := apps[0].repoSnapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		known := map[string]bool{}
		for _, b := range committed {
			known[b.snap] = true
		}
		for _, s := range listed {
			if known[s] || forgotten[s] {
				continue
			}
			base := s[:strings.LastIndex(s, ":")]
			for i := range pes {
				for _, p := range pes[i] {
					if p.id == base && i == victim {
						stats["backup committed by a killed appliance"]++
						committed = append(committed, backedUp{snap: s, pe: p, want: wants[p.id]})
						known[s] = true
					}
				}
			}
			if !known[s] {
				unexpected.add(fmt.Errorf("round %d: the repository lists %s, which no backup reported", r, s))
			}
		}
	}
	unexpected.report(t, "two appliances")
	t.Logf("outcomes: %v", stats)

	// After all that: the second appliance still stores nothing the
	// first stored.
	dedup(newPE(0, "disk:late.img"))

	// A prune with nothing running removes what is forgotten, and no
	// more: every committed snapshot restores as it was backed up.
	pruned = mustRun(t, cfgs[0], append([]string{"repo", "prune"}, repoArgs...)...)
	t.Logf("final prune: %s", strings.TrimSpace(pruned.stdout))
	if r := mustRun(t, cfgs[0], append([]string{"repo", "check", "--read-data"}, repoArgs...)...); !strings.Contains(r.stdout, "no problems found") {
		t.Errorf("repo check --read-data: %s%s", r.stdout, r.stderr)
	}
	var live []backedUp
	var want []string
	for _, b := range committed {
		if !forgotten[b.snap] {
			live = append(live, b)
			want = append(want, b.snap)
		}
	}
	listed, err := apps[0].repoSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(listed)
	sort.Strings(want)
	if !slices.Equal(listed, want) {
		t.Errorf("the repository lists %d snapshots, want the %d committed and not forgotten:\nlisted %v\nwant %v", len(listed), len(want), listed, want)
	}
	restoreAll(ctx, t, apps[0], cfgs[0], live)
	for _, a := range apps {
		a.stop()
	}
}
