package repo

import (
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// manyPacks backs up n versions of a small disk, each its own pack.
func (e *env) manyPacks(n int) {
	e.t.Helper()
	for range n {
		e.disk("d.img", 256<<10, map[int64]int64{0: 64 << 10})
		e.backup("disk:d.img")
	}
}

func (e *env) checkWith(opts CheckOptions) CheckSummary {
	e.t.Helper()
	sum, err := e.r.CheckWith(context.Background(), opts, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return sum
}

func (e *env) newPacks(before []string) []string {
	var out []string
	for _, p := range e.files("data") {
		if !slices.Contains(before, p) {
			out = append(out, p)
		}
	}
	return out
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func subset(t *testing.T, s string) Subset {
	t.Helper()
	sub, err := ParseSubset(s)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

// TestCheckSubsets: a subset check reads the number of packs asked, n/t
// groups split the packs, random subsets cover every pack in a bounded
// number of runs, and the summary counts packs and bytes.
func TestCheckSubsets(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	e.manyPacks(40)
	n := int64(len(e.files("data")))
	if n < 40 {
		t.Fatalf("%d packs, want at least 40", n)
	}

	sum := e.checkWith(CheckOptions{})
	if sum.Packs != n || sum.Read != 0 || sum.ReadBytes != 0 || len(sum.Problems) != 0 {
		t.Fatalf("structure only: %+v", sum)
	}
	full := e.checkWith(CheckOptions{ReadData: true})
	if full.Read != n || full.ReadBytes != full.Bytes || full.Bytes == 0 {
		t.Fatalf("read-data: %+v", full)
	}
	for _, c := range []struct {
		subset string
		want   int64
	}{
		{"10%", int64(math.Ceil(float64(n) / 10))},
		{"2.5%", int64(math.Ceil(float64(n) / 40))},
		{"100%", n},
		{"5", 5},
		{"1", 1},
		{"100000", n},
	} {
		sum := e.checkWith(CheckOptions{Subset: subset(t, c.subset)})
		if sum.Read != c.want || len(sum.Problems) != 0 {
			t.Errorf("subset %s of %d packs: read %d, want %d (%v)", c.subset, n, sum.Read, c.want, sum.Problems)
		}
	}
	var groups, bytes int64
	for i := 1; i <= 4; i++ {
		sum := e.checkWith(CheckOptions{Subset: subset(t, strings.Join([]string{string(rune('0' + i)), "4"}, "/"))})
		groups += sum.Read
		bytes += sum.ReadBytes
	}
	if groups != n || bytes != full.Bytes {
		t.Errorf("groups 1/4..4/4 read %d packs, %d bytes; want %d, %d", groups, bytes, n, full.Bytes)
	}

	// Random 10% subsets cover every pack eventually: the record of the
	// packs read grows to all of them.
	runs := 0
	for ; runs < 200; runs++ {
		e.checkWith(CheckOptions{Subset: subset(t, "10%"), Verifier: "cover"})
		rec, err := e.r.loadVerified(context.Background(), "verified/cover")
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(rec)) == n {
			break
		}
	}
	if runs == 200 {
		t.Fatalf("200 random 10%% subsets did not read all %d packs", n)
	}
	t.Logf("%d packs: random 10%% subsets read them all in %d runs", n, runs+1)

	for _, bad := range []string{"", "0", "-1", "0%", "101%", "x%", "0/4", "5/4", "1/0", "a/b", "1/2/3"} {
		if _, err := ParseSubset(bad); err == nil {
			t.Errorf("subset %q accepted", bad)
		}
	}
}

// TestCheckNew: the "new" mode reads the packs its verifier has not read
// before, and only those; it finds a damaged new pack; a full read still
// reads every pack; each verifier has its own record, bound to its name.
func TestCheckNew(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	e.manyPacks(10)
	n := int64(len(e.files("data")))
	newA := CheckOptions{New: true, Verifier: "a"}

	if sum := e.checkWith(newA); sum.Read != n || sum.New != n || len(sum.Problems) != 0 {
		t.Fatalf("first new verify: %+v", sum)
	}
	if sum := e.checkWith(newA); sum.Read != 0 || sum.New != 0 {
		t.Fatalf("second new verify read %d packs, want none", sum.Read)
	}

	// Three more backups: only their packs are read.
	before := e.files("data")
	e.manyPacks(3)
	added := e.newPacks(before)
	if sum := e.checkWith(newA); sum.Read != int64(len(added)) || sum.New != int64(len(added)) || len(added) == 0 {
		t.Fatalf("after %d new packs: %+v", len(added), sum)
	}

	// A new pack damaged: the new verify finds it, and reads it again
	// next time (a damaged pack is not recorded as verified).
	before = e.files("data")
	e.manyPacks(1)
	added = e.newPacks(before)
	if len(added) != 1 {
		t.Fatalf("one backup added %d packs", len(added))
	}
	flipByte(t, added[0])
	for range 2 {
		sum := e.checkWith(newA)
		if sum.Read != 1 || len(sum.Problems) == 0 || sum.Problems[0].Pack != filepath.Base(added[0]) {
			t.Fatalf("new verify of a damaged new pack: %+v", sum)
		}
	}
	if probs := e.check(true); len(probs) == 0 {
		t.Fatal("a full read misses the damaged pack")
	}

	// An old pack damaged after it was verified: the new mode does not
	// read it again, a full read does, and takes it out of the record.
	flipByte(t, before[0])
	if sum := e.checkWith(newA); sum.Read != 1 {
		t.Fatalf("new verify read %d packs, want the one still damaged", sum.Read)
	}
	all := int64(len(e.files("data")))
	full := e.checkWith(CheckOptions{ReadData: true, Verifier: "a"})
	if full.Read != all || len(full.Problems) < 2 {
		t.Fatalf("full read: read %d of %d packs, %d problems", full.Read, all, len(full.Problems))
	}
	if sum := e.checkWith(newA); sum.Read != 2 {
		t.Fatalf("new verify after a full read found two damaged packs: read %d, want 2", sum.Read)
	}

	// Another verifier trusts nothing of a's, not even a's record copied
	// under its name.
	copyFile(t, filepath.Join(e.be.Location(), "verified", "a"), filepath.Join(e.be.Location(), "verified", "b"))
	if sum := e.checkWith(CheckOptions{New: true, Verifier: "b"}); sum.Read != all {
		t.Fatalf("verifier b read %d of %d packs", sum.Read, all)
	}
	if _, err := e.r.CheckWith(context.Background(), CheckOptions{New: true}, nil); err == nil {
		t.Fatal("new without a verifier accepted")
	}
	if _, err := e.r.CheckWith(context.Background(), CheckOptions{New: true, Verifier: "../x"}, nil); err == nil {
		t.Fatal("verifier ../x accepted")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCheckSubsetBounds: a group count beyond the bound is refused with a
// clear error (it used to divide by zero at 2^32 and read nothing above
// it), the bound itself works, and objects in data/ whose names are not
// pack IDs are reported, not read, in every mode (a short one used to
// panic).
func TestCheckSubsetBounds(t *testing.T) {
	for _, bad := range []string{"1/4294967296", "2/4294967297", "1/1000001", "1/9223372036854775807"} {
		_, err := ParseSubset(bad)
		if err == nil || !strings.Contains(err.Error(), "at most 1000000 groups") {
			t.Errorf("subset %q: %v, want refused for too many groups", bad, err)
		}
	}
	e := newEnv(t, nil, Options{Password: "pw"})
	e.manyPacks(3)
	n := int64(len(e.files("data")))
	var read int64
	for _, s := range []string{"1/1000000", "1000000/1000000"} {
		read += e.checkWith(CheckOptions{Subset: subset(t, s)}).Read
	}
	if read > n {
		t.Errorf("groups 1 and 1000000 of 1000000 read %d of %d packs", read, n)
	}
	for _, stray := range []string{"x", "ab/short", "zz/" + strings.Repeat("z", 64)} {
		p := filepath.Join(e.be.Location(), "data", filepath.FromSlash(stray))
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte("not a pack"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, opts := range []CheckOptions{
		{Subset: subset(t, "1/1")}, {Subset: subset(t, "1/3")}, {Subset: subset(t, "100%")},
		{ReadData: true}, {New: true, Verifier: "strays"},
	} {
		sum := e.checkWith(opts)
		if sum.Packs != n || sum.Read > n {
			t.Errorf("%+v: %d packs, read %d; want %d packs", opts, sum.Packs, sum.Read, n)
		}
		var strays int
		for _, p := range sum.Problems {
			if strings.Contains(p.Detail, "not a pack") {
				strays++
			}
		}
		if strays != 3 || len(sum.Problems) != 3 {
			t.Errorf("%+v: problems %v, want the 3 objects that are not packs", opts, sum.Problems)
		}
	}
}

// saveFailing fails every Save of an object under prefix.
type saveFailing struct {
	backend.Backend
	prefix string
}

func (s saveFailing) Save(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasPrefix(name, s.prefix) {
		return errInjected
	}
	return s.Backend.Save(ctx, name, r, size)
}

// TestCheckVerifiedSaveFails: when the record of verified packs cannot be
// saved, the problems found are still returned, with the error.
func TestCheckVerifiedSaveFails(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	e.manyPacks(3)
	flipByte(t, e.files("data")[0])
	r := openAgain(t, saveFailing{Backend: e.be, prefix: "verified/"}, Options{Password: "pw"})
	sum, err := r.CheckWith(context.Background(), CheckOptions{ReadData: true, Verifier: "v"}, nil)
	if !errors.Is(err, errInjected) || len(sum.Problems) == 0 {
		t.Fatalf("save failing: err %v, problems %v; want the error and the damaged pack", err, sum.Problems)
	}
	for _, bad := range []string{"a..b", "..", "x/y"} {
		if _, err := r.CheckWith(context.Background(), CheckOptions{New: true, Verifier: bad}, nil); err == nil || !strings.Contains(err.Error(), "verifier") {
			t.Errorf("verifier %q: %v, want refused", bad, err)
		}
	}
}

// TestCheckVerifiedUnreadable: a record that cannot be read for another
// reason than its absence or damage (an S3 503) fails the check instead of
// counting as empty: a subset run would otherwise save only its own packs
// and wipe the record.
func TestCheckVerifiedUnreadable(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	e.manyPacks(4)
	n := len(e.files("data"))
	e.checkWith(CheckOptions{ReadData: true, Verifier: "v"})
	r := openAgain(t, &faultyBackend{Backend: e.be, failLoad: "verified/"}, Options{Password: "pw"})
	if _, err := r.CheckWith(context.Background(), CheckOptions{Subset: subset(t, "1"), Verifier: "v"}, nil); !errors.Is(err, errInjected) {
		t.Fatalf("record unreadable: %v, want the read error", err)
	}
	rec, err := e.r.loadVerified(context.Background(), "verified/v")
	if err != nil || len(rec) != n {
		t.Fatalf("record after a failed read: %d packs (%v), want %d", len(rec), err, n)
	}
	// A damaged record counts as empty, as before.
	flipByte(t, filepath.Join(e.be.Location(), "verified", "v"))
	if sum := e.checkWith(CheckOptions{New: true, Verifier: "v"}); sum.Read != int64(n) {
		t.Fatalf("damaged record: read %d of %d packs", sum.Read, n)
	}
}

// TestCheckVerifiedConcurrent: two checks of one verifier at once (the
// appliance's job and the CLI, both named after the host): the one that
// saves last keeps what the other found, and does not put back a pack the
// other has just found damaged.
func TestCheckVerifiedConcurrent(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	e.manyPacks(6)
	packs := e.files("data")
	e.checkWith(CheckOptions{ReadData: true, Verifier: "v"})
	damaged := packs[len(packs)-1]
	flipByte(t, damaged)
	var inner CheckSummary
	hook := &loadHook{Backend: e.be}
	hook.hook = func() { inner = e.checkWith(CheckOptions{ReadData: true, Verifier: "v"}) }
	r := openAgain(t, hook, Options{Password: "pw"})
	// Reads the first pack only, which is not the damaged one.
	if _, err := r.CheckWith(context.Background(), CheckOptions{Subset: subset(t, "1"), Verifier: "v"}, nil); err != nil {
		t.Fatal(err)
	}
	if len(inner.Problems) == 0 {
		t.Fatal("the concurrent full check found nothing")
	}
	rec, err := e.r.loadVerified(context.Background(), "verified/v")
	if err != nil {
		t.Fatal(err)
	}
	if rec[filepath.Base(damaged)] || len(rec) != len(packs)-1 {
		t.Fatalf("record has %d of %d packs, damaged one in it: %v", len(rec), len(packs), rec[filepath.Base(damaged)])
	}
}
