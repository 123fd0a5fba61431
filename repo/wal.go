package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// PostgreSQL WAL, archived continuously beside the snapshots:
//
//	wal/<cluster>/<system id>/<segment>           a complete segment
//	wal/<cluster>/<system id>/<segment>.partial   the received start of one
//	wal/<cluster>/<system id>/<timeline>.history  a timeline's history file
//
// Each object is sealed with its own name as additional data and holds
// the file's facts and its chunk list: it is the commit, written after
// the packs holding the chunks and their index file, so a segment is
// visible only once completely stored. Its chunks are cut by content,
// deduplicated, compressed and sealed as a snapshot's are; prune keeps
// the packs WAL files use. Versions before WAL archiving ignore the wal/
// prefix and their prune would not keep its packs: the first WAL file
// stored raises the repository to walFormatVersion, which they refuse.

// ErrWALNotFound is returned for a WAL file the repository lacks.
var ErrWALNotFound = errors.New("not in the repository")

// ErrWALConflict is returned when a WAL file is stored again with other
// bytes than the repository holds under its name: two histories (a
// failover, a restored clone) wrote the same segment name.
var ErrWALConflict = errors.New("the repository holds other bytes under this name")

// WALFile is one archived WAL file of a cluster.
type WALFile struct {
	Cluster  string `json:"cluster"`
	SystemID uint64 `json:"systemID"`
	// Name is the file's name in pg_wal: a segment's 24 hex digits, or
	// a timeline's 8 followed by ".history".
	Name string `json:"name"`
	// Partial marks a segment whose end was not received (a receiver
	// stopped, or its timeline ended): Size bytes were.
	Partial bool  `json:"partial,omitempty"`
	Size    int64 `json:"size"`
	// StartLSN and EndLSN are the positions of the file's first byte
	// and of the end of what it holds (segments only).
	StartLSN uint64 `json:"startLSN,omitempty"`
	EndLSN   uint64 `json:"endLSN,omitempty"`
	// FirstCommit and LastCommit are the earliest and latest commit or
	// abort timestamps of the transaction records that end in the
	// segment (zero if none does): a point-in-time restore to T needs
	// the segments up to the first whose LastCommit is after T.
	FirstCommit time.Time `json:"firstCommit,omitzero"`
	LastCommit  time.Time `json:"lastCommit,omitzero"`
	// ServerTime is the server's clock when it sent the file's last
	// byte; Stored when the repository committed the file.
	ServerTime time.Time `json:"serverTime,omitzero"`
	Stored     time.Time `json:"stored"`
	// SHA256 is the hex SHA-256 of the file's bytes (empty in files
	// stored before it was recorded).
	SHA256 string `json:"sha256,omitempty"`
}

// IsHistory reports whether the file is a timeline history file.
func (f WALFile) IsHistory() bool { return strings.HasSuffix(f.Name, ".history") }

// Timeline is the timeline of the segment or history file.
func (f WALFile) Timeline() uint32 {
	tl, _ := strconv.ParseUint(f.Name[:8], 16, 32)
	return uint32(tl)
}

// walObject is what a WAL file's object holds.
type walObject struct {
	WALFile
	Data *stream `json:"data"`
}

// ValidWALName checks a WAL file name as pg_wal spells it: 24 upper-case
// hex digits for a segment, 8 and ".history" for a timeline's history.
func ValidWALName(name string) error {
	hex := func(s string) bool {
		for _, c := range s {
			if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
				return false
			}
		}
		return true
	}
	if len(name) == 24 && hex(name) || len(name) == 16 && strings.HasSuffix(name, ".history") && hex(name[:8]) {
		return nil
	}
	return fmt.Errorf("%q is not a WAL segment or timeline history file name", name)
}

// ValidClusterName checks a cluster's name for use in object names.
func ValidClusterName(name string) error {
	if name == "" || len(name) > 128 || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." {
		return fmt.Errorf("cluster name %q: want 1 to 128 characters without '/'", name)
	}
	return nil
}

func walDir(cluster string, systemID uint64) string {
	return "wal/" + url.PathEscape(cluster) + "/" + strconv.FormatUint(systemID, 10) + "/"
}

func walObjectName(cluster string, systemID uint64, name string, partial bool) string {
	n := walDir(cluster, systemID) + name
	if partial {
		n += ".partial"
	}
	return n
}

func walAAD(object string) []byte { return []byte("astrolabe wal\x00" + object) }

// PutWAL stores a WAL file of a cluster unless the repository has it
// (stored reports whether it wrote it). A complete segment replaces the
// partial one of the same name, removed once the segment is committed.
// It holds a shared lock meanwhile, as a backup does.
func (r *Repository) PutWAL(ctx context.Context, f WALFile, data []byte) (stored bool, err error) {
	if err := ValidClusterName(f.Cluster); err != nil {
		return false, err
	}
	if err := ValidWALName(f.Name); err != nil {
		return false, err
	}
	if f.IsHistory() && f.Partial {
		return false, fmt.Errorf("WAL %s: a history file is not partial", f.Name)
	}
	if len(data) > maxWALFileSize {
		return false, fmt.Errorf("WAL %s: %d bytes, more than a segment holds", f.Name, len(data))
	}
	f.Size = int64(len(data))
	name := walObjectName(f.Cluster, f.SystemID, f.Name, f.Partial)
	fail := func(err error) (bool, error) {
		return false, fmt.Errorf("store WAL %s of %s: %w", f.Name, f.Cluster, err)
	}
	sum := sha256.Sum256(data)
	f.SHA256 = hex.EncodeToString(sum[:])
	if _, err := r.be.Stat(ctx, walObjectName(f.Cluster, f.SystemID, f.Name, false)); err == nil {
		if err := r.sameWAL(ctx, f, data); err != nil {
			return fail(err)
		}
		if !f.Partial {
			r.removePartial(ctx, f)
		}
		return false, nil // complete already
	} else if !errors.Is(err, backend.ErrNotExist) {
		return fail(err)
	}
	if f.Partial {
		// A receiver that started the segment again keeps the longer
		// partial one of its previous run until it has more.
		if o, err := r.loadWALObject(ctx, name); err == nil && o.Size >= f.Size {
			return false, nil
		}
	}
	lock, err := r.lock(ctx, false)
	if err != nil {
		return fail(err)
	}
	defer lock.release()
	if err := r.upgradeConfig(ctx, walFormatVersion); err != nil {
		return fail(err)
	}
	if err := r.refreshIndex(ctx); err != nil {
		return fail(err)
	}
	b := &backupRun{r: r, ctx: ctx, lock: lock, pk: newPacker(ctx, r)}
	st, err := b.cdcStream(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		b.pk.finish()
		return fail(err)
	}
	if err := b.lock.recheck(ctx); err != nil {
		return fail(err)
	}
	if err := b.confirmPacks(&snapshotIndex{Data: st}); err != nil {
		return fail(err)
	}
	f.Stored = r.now().UTC()
	sealed, err := r.sealJSON(walObject{WALFile: f, Data: st}, walAAD(name))
	if err != nil {
		return fail(err)
	}
	if err := r.saveObject(ctx, name, sealed); err != nil {
		return fail(err)
	}
	if !f.Partial {
		r.removePartial(ctx, f)
	}
	return true, nil
}

// sameWAL checks that the complete file the repository holds under f's
// name has f's bytes: a partial f must be its start.
func (r *Repository) sameWAL(ctx context.Context, f WALFile, data []byte) error {
	o, err := r.loadWALObject(ctx, walObjectName(f.Cluster, f.SystemID, f.Name, false))
	if err != nil {
		return err
	}
	if !f.Partial && o.SHA256 != "" {
		if o.SHA256 != f.SHA256 {
			return ErrWALConflict
		}
		return nil
	}
	_, have, err := r.ReadWAL(ctx, f.Cluster, f.SystemID, f.Name, false)
	if err != nil {
		return err
	}
	if f.Partial {
		have = have[:min(len(have), len(data))]
	}
	if !bytes.Equal(have, data) {
		return ErrWALConflict
	}
	return nil
}

// removePartial removes the partial segment a complete one replaced; one
// left behind is harmless (the complete one is preferred).
func (r *Repository) removePartial(ctx context.Context, f WALFile) {
	name := walObjectName(f.Cluster, f.SystemID, f.Name, true)
	if err := r.be.Remove(ctx, name); err != nil && !errors.Is(err, backend.ErrNotExist) {
		r.log.Warn("cannot remove a partial WAL segment its complete one replaced", "object", name, "err", err)
	}
}

// WALClusters lists the clusters (name and system identifier) that have
// WAL in the repository.
func (r *Repository) WALClusters(ctx context.Context) ([]WALCluster, error) {
	seen := map[WALCluster]bool{}
	err := r.be.List(ctx, "wal/", func(name string, _ int64) error {
		if c, _, _, ok := parseWALObject(name); ok {
			seen[c] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	out := make([]WALCluster, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].SystemID < out[j].SystemID
	})
	return out, nil
}

// WALCluster names a cluster's archive: its name and system identifier.
type WALCluster struct {
	Name     string
	SystemID uint64
}

// parseWALObject takes an object name of wal/ apart.
func parseWALObject(object string) (c WALCluster, file string, partial bool, ok bool) {
	parts := strings.Split(strings.TrimPrefix(object, "wal/"), "/")
	if len(parts) != 3 || !strings.HasPrefix(object, "wal/") {
		return c, "", false, false
	}
	name, err := url.PathUnescape(parts[0])
	if err != nil || ValidClusterName(name) != nil {
		return c, "", false, false
	}
	id, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return c, "", false, false
	}
	file, partial = strings.CutSuffix(parts[2], ".partial")
	if ValidWALName(file) != nil || partial && strings.HasSuffix(file, ".history") {
		return c, "", false, false
	}
	return WALCluster{Name: name, SystemID: id}, file, partial, true
}

// WALFiles lists the WAL files of a cluster, segments in order (a
// complete segment before a partial one of its name) and history files
// last. A file whose object does not open as its own is an error.
func (r *Repository) WALFiles(ctx context.Context, cluster string, systemID uint64) ([]WALFile, error) {
	objs, err := r.walObjects(ctx, cluster, systemID)
	if err != nil {
		return nil, err
	}
	out := make([]WALFile, len(objs))
	for i, o := range objs {
		out[i] = o.WALFile
	}
	return out, nil
}

func (r *Repository) walObjects(ctx context.Context, cluster string, systemID uint64) ([]walObject, error) {
	type listed struct {
		name    string
		size    int64
		partial bool
	}
	var names []listed
	err := r.be.List(ctx, walDir(cluster, systemID), func(name string, size int64) error {
		if c, _, partial, ok := parseWALObject(name); ok && c.Name == cluster && c.SystemID == systemID {
			names = append(names, listed{name, size, partial})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL of %s: %w", cluster, err)
	}
	out := make([]walObject, 0, len(names))
	for _, l := range names {
		if o, ok := r.walCache.get(l.name, l.size); ok {
			out = append(out, o)
			continue
		}
		o, err := r.loadWALObject(ctx, l.name)
		if errors.Is(err, ErrWALNotFound) {
			continue // replaced meanwhile
		}
		if err != nil {
			return nil, err
		}
		if !l.partial {
			r.walCache.put(l.name, l.size, o)
		}
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].WALFile, out[j].WALFile
		if a.IsHistory() != b.IsHistory() {
			return b.IsHistory()
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return !a.Partial && b.Partial
	})
	return out, nil
}

func (r *Repository) loadWALObject(ctx context.Context, name string) (walObject, error) {
	var o walObject
	b, err := backend.ReadAll(ctx, r.be, name)
	if errors.Is(err, backend.ErrNotExist) {
		return o, fmt.Errorf("%s: %w", name, ErrWALNotFound)
	}
	if err != nil {
		return o, fmt.Errorf("%s: %w", name, err)
	}
	if err := r.openJSON(b, &o, walAAD(name)); err != nil {
		return o, badObject("%s is damaged or not this file's: %w", name, err)
	}
	c, file, partial, _ := parseWALObject(name)
	if o.Cluster != c.Name || o.SystemID != c.SystemID || o.Name != file || o.Partial != partial || o.Data == nil {
		return o, badObject("%s holds WAL %s of %s: %w", name, o.Name, o.Cluster, errMisplaced)
	}
	if err := (&snapshotIndex{Data: o.Data}).valid(); err != nil || o.Data.Size != o.Size {
		return o, badObject("%s: its chunk list is damaged: %v", name, err)
	}
	return o, nil
}

// maxWALFileSize is PostgreSQL's largest WAL segment size: ReadWAL holds
// a file in memory and reads no more.
const maxWALFileSize = 1 << 30

// ReadWAL returns the bytes of a WAL file: the complete segment, else
// the partial one if partialOK.
func (r *Repository) ReadWAL(ctx context.Context, cluster string, systemID uint64, name string, partialOK bool) (WALFile, []byte, error) {
	if err := ValidWALName(name); err != nil {
		return WALFile{}, nil, err
	}
	o, err := r.loadWALObject(ctx, walObjectName(cluster, systemID, name, false))
	if errors.Is(err, ErrWALNotFound) && partialOK && !strings.HasSuffix(name, ".history") {
		o, err = r.loadWALObject(ctx, walObjectName(cluster, systemID, name, true))
	}
	if errors.Is(err, ErrWALNotFound) {
		return WALFile{}, nil, fmt.Errorf("WAL %s of cluster %s (system %d): %w", name, cluster, systemID, ErrWALNotFound)
	}
	if err != nil {
		return WALFile{}, nil, err
	}
	if o.Size > maxWALFileSize {
		return WALFile{}, nil, badObject("WAL %s of %s: %d bytes, more than a segment can hold", name, cluster, o.Size)
	}
	img := newStreamImage(r, o.Data, 2)
	defer img.Close()
	data := make([]byte, o.Size)
	if _, err := img.ReadAtContext(ctx, data, 0); err != nil && !errors.Is(err, io.EOF) {
		return WALFile{}, nil, fmt.Errorf("WAL %s of %s: %w", name, cluster, err)
	}
	return o.WALFile, data, nil
}

// ForgetWAL removes the segments of a cluster whose names sort before
// before (those older than the oldest base backup kept), and their
// partial ones; history files stay. Their data goes with the next prune.
func (r *Repository) ForgetWAL(ctx context.Context, cluster string, systemID uint64, before string) (int, error) {
	if len(before) != 24 || ValidWALName(before) != nil {
		return 0, fmt.Errorf("forget WAL before %q: want a segment name", before)
	}
	var names []string
	err := r.be.List(ctx, walDir(cluster, systemID), func(name string, _ int64) error {
		if c, file, _, ok := parseWALObject(name); ok && c.Name == cluster && c.SystemID == systemID && len(file) == 24 && file[8:] < before[8:] {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list WAL of %s: %w", cluster, err)
	}
	for i, name := range names {
		r.walCache.drop(name)
		if err := r.be.Remove(ctx, name); err != nil {
			return i, fmt.Errorf("forget WAL: %w", err)
		}
	}
	return len(names), nil
}

// markWALUsed adds the packs the archived WAL files use to used.
func (r *Repository) markWALUsed(ctx context.Context, used map[string]bool) error {
	return r.eachWALObject(ctx, func(_ string, o walObject) {
		for _, c := range o.Data.Chunks {
			used[c.Pack] = true
		}
	})
}

// eachWALObject calls fn with every WAL object; one that does not open
// is an error (prune must not drop the packs of what it cannot read).
func (r *Repository) eachWALObject(ctx context.Context, fn func(name string, o walObject)) error {
	var names []string
	err := r.be.List(ctx, "wal/", func(name string, _ int64) error {
		names = append(names, name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list WAL: %w", err)
	}
	for _, name := range names {
		if _, _, _, ok := parseWALObject(name); !ok {
			return fmt.Errorf("WAL object %s: its name is not a WAL file's: stopped", name)
		}
		o, err := r.loadWALObject(ctx, name)
		if errors.Is(err, ErrWALNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		fn(name, o)
	}
	return nil
}

// checkWAL adds the chunks of the archived WAL files to what Check
// verifies, and reports the WAL objects that do not open.
func (r *Repository) checkWAL(ctx context.Context, users map[string][]string, refs map[string]chunkRef, byPack map[string][]chunkRef) ([]Problem, error) {
	var names []string
	if err := r.be.List(ctx, "wal/", func(name string, _ int64) error {
		names = append(names, name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list WAL: %w", err)
	}
	var problems []Problem
	for _, name := range names {
		o, err := r.loadWALObject(ctx, name)
		switch {
		case errors.Is(err, ErrWALNotFound):
			continue
		case errors.Is(err, errBadObject):
			problems = append(problems, Problem{Detail: err.Error()})
			continue
		case err != nil:
			return nil, err
		}
		user := "WAL " + strings.TrimPrefix(name, "wal/")
		for _, c := range o.Data.Chunks {
			users[c.ID] = append(users[c.ID], user)
			if _, seen := refs[c.ID]; !seen {
				refs[c.ID] = c
				byPack[c.Pack] = append(byPack[c.Pack], c)
			}
		}
	}
	return problems, nil
}

// walObjectCache keeps the WAL objects read, by name and sealed size, so
// that listing a cluster's WAL (every restore_command of a replay, every
// point-in-time restore) decrypts only the objects new since the last
// listing. Complete segments and history files only: they are not
// rewritten under their name (partial ones are, as they grow); one
// forgotten is dropped.
type walObjectCache struct {
	mu      sync.Mutex
	objects map[string]cachedWALObject
}

type cachedWALObject struct {
	size int64
	o    walObject
}

func (c *walObjectCache) get(name string, size int64) (walObject, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.objects[name]
	if !ok || e.size != size {
		return walObject{}, false
	}
	return e.o, true
}

func (c *walObjectCache) put(name string, size int64, o walObject) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.objects == nil {
		c.objects = map[string]cachedWALObject{}
	}
	c.objects[name] = cachedWALObject{size, o}
}

func (c *walObjectCache) drop(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.objects, name)
}
