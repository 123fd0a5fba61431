package repo

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// CheckOptions say how much of the packs' data Check reads. Without any,
// it checks only the structure.
type CheckOptions struct {
	// ReadData reads every pack whole.
	ReadData bool
	// Subset reads a part of the packs (ParseSubset).
	Subset Subset
	// New reads the packs Verifier has not read whole before without
	// finding a problem.
	New bool
	// Verifier names whose record of read packs Check keeps (in the
	// repository, verified/NAME, sealed with its key): every pack read
	// whole without a problem is added to it. Empty keeps none; New
	// needs one.
	Verifier string
}

// CheckSummary is what Check found and how much it read.
type CheckSummary struct {
	Problems []Problem
	// Packs and Bytes are the repository's packs; Read and ReadBytes those
	// read whole, of which New were not in the verifier's record.
	Packs, Bytes    int64
	Read, ReadBytes int64
	New             int64
	// Verifier is the verifier of a check that read the packs new to it
	// (CheckOptions.New), and Verified how many of the packs were in its
	// record then.
	Verifier string
	Verified int64
}

// String says how much was read, e.g. "read 12 of 120 packs (3.1 MiB
// of 30 MiB), 2 new".
func (s CheckSummary) String() string {
	if s.Read == 0 && s.Verifier != "" {
		return fmt.Sprintf("no pack new since the last read by verifier %s (%d packs verified before)", s.Verifier, s.Verified)
	}
	if s.Read == 0 {
		return fmt.Sprintf("read no pack data (%d packs, %d bytes)", s.Packs, s.Bytes)
	}
	str := fmt.Sprintf("read %d of %d packs (%d of %d bytes)", s.Read, s.Packs, s.ReadBytes, s.Bytes)
	if s.New > 0 {
		str += fmt.Sprintf(", %d not read before", s.New)
	}
	return str
}

// Subset is a part of the packs: group n of t (each pack in exactly one
// of the t groups, by its ID, so that n = 1..t read everything once), a
// percentage of them or a number of them, chosen at random each time.
// The zero Subset is none.
type Subset struct {
	n, t    int
	percent float64
	count   int
}

// maxSubsetGroups bounds t in "n/t": a pack's group is the first 4 bytes
// of its ID modulo t, and far fewer groups than packs already read next
// to nothing.
const maxSubsetGroups = 1_000_000

// ParseSubset parses "n/t", "x%" (0 < x <= 100) or "N" (a number of
// packs), as restic's check --read-data-subset. Its errors start with s
// quoted, so that a caller names the option or field before it.
func ParseSubset(s string) (Subset, error) {
	bad := func(format string, a ...any) (Subset, error) {
		return Subset{}, fmt.Errorf("%q: %s", s, fmt.Sprintf(format, a...))
	}
	const forms = "want n/t (group n of t), x% (a percentage) or N (a number of packs), chosen at random"
	switch {
	case s == "":
		return bad("empty: %s", forms)
	case strings.Contains(s, "/"):
		a, b, _ := strings.Cut(s, "/")
		n, err1 := strconv.Atoi(a)
		t, err2 := strconv.Atoi(b)
		if err1 != nil || err2 != nil {
			return bad("want n/t, two whole numbers: group n of t (1/3, 2/3 and 3/3 read each pack once)")
		}
		if t < 1 {
			return bad("t must be at least 1 (n/t is group n of t)")
		}
		if n < 1 || n > t {
			return bad("want 1 <= n <= %d", t)
		}
		if t > maxSubsetGroups {
			return bad("want at most %d groups", maxSubsetGroups)
		}
		return Subset{n: n, t: t}, nil
	case strings.HasSuffix(s, "%"):
		p, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
		if err != nil || !(p > 0 && p <= 100) {
			return bad("want x%%: a percentage above 0 and at most 100")
		}
		return Subset{percent: p}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return bad("%s", forms)
	}
	if n < 1 {
		return bad("want at least 1 pack")
	}
	return Subset{count: n}, nil
}

// IsZero reports whether s selects nothing.
func (s Subset) IsZero() bool { return s == Subset{} }

func (s Subset) String() string {
	switch {
	case s.t > 0:
		return fmt.Sprintf("%d/%d", s.n, s.t)
	case s.percent > 0:
		return strconv.FormatFloat(s.percent, 'f', -1, 64) + "%"
	case s.count > 0:
		return strconv.Itoa(s.count)
	}
	return ""
}

// pick returns the packs of ids (sorted) s selects.
func (s Subset) pick(ids []string) []string {
	switch {
	case s.t > 0:
		var out []string
		for _, id := range ids {
			if !validID(id) {
				continue // not a pack: CheckWith reports it
			}
			b, _ := hex.DecodeString(id[:8])
			if uint64(binary.BigEndian.Uint32(b))%uint64(s.t) == uint64(s.n-1) {
				out = append(out, id)
			}
		}
		return out
	case s.percent > 0:
		return randomPacks(ids, int(math.Ceil(s.percent*float64(len(ids))/100-1e-9)))
	case s.count > 0:
		return randomPacks(ids, s.count)
	}
	return nil
}

// randomPacks returns n of ids chosen at random (all if there are fewer).
func randomPacks(ids []string, n int) []string {
	if n >= len(ids) {
		return ids
	}
	out := slices.Clone(ids)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	out = out[:n]
	slices.Sort(out)
	return out
}

// DefaultVerifier is the verifier name of this machine: its host name.
func DefaultVerifier() string {
	h, err := os.Hostname()
	if _, nerr := verifiedName(h); err != nil || nerr != nil {
		return "default"
	}
	return h
}

// verifiedRecord is a verifier's record of the packs it read whole
// without a problem.
type verifiedRecord struct {
	Packs []string `json:"packs"`
}

func verifiedName(verifier string) (string, error) {
	// ".." anywhere is refused as the directory backend refuses it in
	// an object's name.
	if verifier == "" || len(verifier) > 128 || strings.Trim(verifier, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" ||
		strings.HasPrefix(verifier, ".") || strings.Contains(verifier, "..") {
		return "", fmt.Errorf("verifier %q: want letters, digits, '.', '_' and '-', not starting with '.' nor with '..'", verifier)
	}
	return "verified/" + verifier, nil
}

// loadVerified reads the verifier's record; a missing one is empty, a
// damaged one too (everything is read again), with a warning. Any other
// failure to read it (an S3 503) is an error: taken for empty, the record
// would be saved back with only the packs of this run.
func (r *Repository) loadVerified(ctx context.Context, name string) (map[string]bool, error) {
	b, err := backend.ReadAll(ctx, r.be, name)
	if errors.Is(err, backend.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the record of verified packs %s: %w", name, err)
	}
	var rec verifiedRecord
	// Bound to its name: one verifier's record is not another's.
	if err := r.openJSON(b, &rec, []byte(name)); err != nil {
		r.log.Warn("check: the record of verified packs is unreadable; every pack counts as new", "record", name, "err", err)
		return map[string]bool{}, nil
	}
	set := make(map[string]bool, len(rec.Packs))
	for _, id := range rec.Packs {
		set[id] = true
	}
	return set, nil
}

// selectPacks returns the packs opts ask to read whole, of those in packs
// (ID → size), and how many of them are not in verified.
func selectPacks(opts CheckOptions, packs map[string]int64, verified map[string]bool) (read []string, fresh int64) {
	all := slices.Sorted(maps.Keys(packs))
	if opts.ReadData {
		read = all
	} else {
		read = opts.Subset.pick(all)
		if opts.New {
			for _, id := range all {
				if !verified[id] {
					read = append(read, id)
				}
			}
			slices.Sort(read)
			read = slices.Compact(read)
		}
	}
	for _, id := range read {
		if !verified[id] {
			fresh++
		}
	}
	return read, fresh
}

// saveVerified updates the verifier's record with what this check
// found: the packs read now without a problem (good) are added, those read
// with one (bad) and those of the record at the start of the check
// (verified) that were gone then (not in packs) are removed. It applies
// that to the record as it is now, read again: another check of the same
// verifier may have saved it meanwhile, and its findings stay. It writes
// nothing when that changes nothing.
func (r *Repository) saveVerified(ctx context.Context, name string, verified map[string]bool, packs map[string]int64, good, bad []string) error {
	current, err := r.loadVerified(ctx, name)
	if err != nil {
		return err
	}
	next := maps.Clone(current)
	for id := range verified {
		if _, ok := packs[id]; !ok {
			delete(next, id)
		}
	}
	for _, id := range good {
		next[id] = true
	}
	for _, id := range bad {
		delete(next, id)
	}
	if maps.Equal(next, current) {
		return nil
	}
	b, err := r.sealJSON(verifiedRecord{Packs: slices.Sorted(maps.Keys(next))}, []byte(name))
	if err == nil {
		err = r.saveObject(ctx, name, b)
	}
	if err != nil {
		return fmt.Errorf("save the record of verified packs: %w", err)
	}
	return nil
}
