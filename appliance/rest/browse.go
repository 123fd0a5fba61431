package rest

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/browse"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// maxIndexes bounds the file indexes of snapshots kept between requests:
// one is what a page browsing a snapshot needs, a few serve a few pages.
const maxIndexes = 4

// maxDirNames bounds the names of disk snapshots' directories kept
// between requests (a few tens of megabytes): a 300,000-entry directory
// is read and sorted once, not for each page of it.
const maxDirNames = 1_000_000

// lru keeps what was used last, up to max in cost. Snapshots do not
// change, so what it keeps of one stays true; a deleted one is refused
// before its entries are looked up (openSnapshot).
type lru[V any] struct {
	mu    sync.Mutex
	max   int
	cost  func(V) int
	total int
	keys  []string // least recently used first
	byKey map[string]V
}

func newLRU[V any](max int, cost func(V) int) *lru[V] {
	return &lru[V]{max: max, cost: cost, byKey: map[string]V{}}
}

func (c *lru[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.byKey[key]
	if ok {
		c.touch(key)
	}
	return v, ok
}

func (c *lru[V]) put(key string, v V) {
	cost := c.cost(v)
	if cost > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.byKey[key]; ok {
		c.total -= c.cost(old)
	}
	c.byKey[key] = v
	c.total += cost
	c.touch(key)
	for c.total > c.max {
		oldest := c.keys[0]
		c.total -= c.cost(c.byKey[oldest])
		delete(c.byKey, oldest)
		c.keys = c.keys[1:]
	}
}

func (c *lru[V]) touch(key string) {
	for i, k := range c.keys {
		if k == key {
			c.keys = append(c.keys[:i], c.keys[i+1:]...)
			break
		}
	}
	c.keys = append(c.keys, key)
}

// dirNames is browse.DirNames over an lru.
type dirNames struct{ *lru[[]string] }

func (d dirNames) Get(key string) ([]string, bool) { return d.get(key) }
func (d dirNames) Put(key string, names []string)  { d.put(key, names) }

func (s *server) ListBrowseSnapshots(ctx context.Context, req api.ListBrowseSnapshotsRequestObject) (api.ListBrowseSnapshotsResponseObject, error) {
	id, err := parseID(req.ProtectedEntityID)
	if err != nil {
		return nil, err
	}
	base := id.Base()
	out := api.ListBrowseSnapshots200JSONResponse{Snapshots: []api.BrowseSnapshot{}}
	found := false
	if p, err := s.m.Get(ctx, base); err == nil {
		found = true
		ids, err := p.ListSnapshots(ctx)
		if err != nil {
			return nil, fmt.Errorf("snapshots of %s: %w", base, err)
		}
		for _, sid := range ids {
			info, err := p.SnapshotInfo(ctx, sid.Snapshot())
			if errors.Is(err, pe.ErrNotFound) {
				continue // deleted while we listed
			}
			if err != nil {
				return nil, fmt.Errorf("snapshot %s: %w", sid, err)
			}
			out.Snapshots = append(out.Snapshots, api.BrowseSnapshot{Id: sid.String(), Location: api.Local, Created: info.Created, Size: info.Size})
		}
	} else if !errors.Is(err, pe.ErrNotFound) {
		return nil, err
	}
	if s.cfg.Repository != nil {
		snaps, err := s.cfg.Repository.RepositorySnapshotList(ctx, base)
		if err != nil {
			return nil, fmt.Errorf("repository snapshots of %s: %w", base, err)
		}
		for _, sn := range snaps {
			found = true
			created := sn.Info.Created
			if created == nil {
				created = &sn.BackedUp
			}
			out.Snapshots = append(out.Snapshots, api.BrowseSnapshot{Id: sn.ID.String(), Location: api.Repository, Created: created, Size: sn.Info.Size})
		}
	}
	if !found {
		return nil, fmt.Errorf("PE %s: %w", base, pe.ErrNotFound)
	}
	sort.SliceStable(out.Snapshots, func(i, j int) bool {
		a, b := out.Snapshots[i].Created, out.Snapshots[j].Created
		return a != nil && (b == nil || a.After(*b))
	})
	return out, nil
}

// snapshotTree is the file tree of one snapshot, for one request: an fs
// snapshot's table of contents, or a disk snapshot's recovery mount.
type snapshotTree interface {
	List(dir, cursor string, limit int) (browse.Page, error)
	Walk(dir string, fn func(p string, e browse.Entry) error) error
	// Open opens the regular file p for reading; the caller closes it.
	Open(p string) (content io.ReadSeekCloser, mtime time.Time, err error)
	Close()
}

// tocTree is the tree of an fs snapshot: its files are ranges of the
// image, opened on the first download (listing a cached index reads no
// data: opening the image of a large tree costs a walk of it).
type tocTree struct {
	ctx context.Context
	p   pe.ProtectedEntity
	*browse.Index
	img *pe.Image
}

func newTOCTree(ctx context.Context, p pe.ProtectedEntity, x *browse.Index, img pe.Image) tocTree {
	t := tocTree{ctx: ctx, p: p, Index: x, img: new(pe.Image)}
	*t.img = img
	return t
}

func (t tocTree) image() (pe.Image, error) {
	if *t.img == nil {
		img, err := t.p.Data(t.ctx)
		if err != nil {
			return nil, fmt.Errorf("data of %s: %w", t.p.ID(), err)
		}
		*t.img = img
	}
	return *t.img, nil
}

func (t tocTree) Open(p string) (io.ReadSeekCloser, time.Time, error) {
	off, size, mtime, err := t.File(p)
	if err != nil {
		return nil, time.Time{}, err
	}
	img, err := t.image()
	if err != nil {
		return nil, time.Time{}, err
	}
	// A file whose bytes are a local file's is read from that file,
	// not through the image's layers.
	if b, ok := img.(pe.BackingFiler); ok && size > 0 {
		if f, err := b.OpenBacking(t.ctx, off, size); err == nil {
			return sectionFile{io.NewSectionReader(f, 0, size), f}, mtime, nil
		}
	}
	// The image stays open with the tree.
	return nopCloser{io.NewSectionReader(ctxReaderAt{t.ctx, img}, off, size)}, mtime, nil
}

func (t tocTree) Close() {
	if *t.img != nil {
		(*t.img).Close()
	}
}

// sectionFile is the first bytes of a file, which it closes.
type sectionFile struct {
	*io.SectionReader
	f *os.File
}

func (s sectionFile) Close() error { return s.f.Close() }

type nopCloser struct{ io.ReadSeeker }

func (nopCloser) Close() error { return nil }

// mountTree is the tree of a disk snapshot's recovery mount.
type mountTree struct {
	browse.Mounted
	release func()
}

func (t mountTree) Open(p string) (io.ReadSeekCloser, time.Time, error) {
	f, fi, err := t.Mounted.Open(p)
	if err != nil {
		return nil, time.Time{}, err
	}
	return f, fi.ModTime(), nil
}

func (t mountTree) Close() { t.release() }

// openSnapshot opens the file tree of the snapshot id at location. The
// caller closes it.
func (s *server) openSnapshot(ctx context.Context, raw string, location *api.SnapshotLocation) (snapshotTree, error) {
	id, err := parseID(raw)
	if err != nil {
		return nil, err
	}
	if !id.HasSnapshot() {
		return nil, badRequest("%s is not a snapshot", id)
	}
	loc := api.Local
	if location != nil {
		loc = *location
	}
	var p pe.ProtectedEntity
	switch loc {
	case api.Local:
		p, err = s.m.Get(ctx, id)
	case api.Repository:
		if s.cfg.Repository == nil {
			return nil, notConfigured("the backup repository")
		}
		p, err = s.cfg.Repository.OpenRepositorySnapshot(ctx, id)
	default:
		return nil, badRequest("location %q: want local or repository", loc)
	}
	if err != nil {
		return nil, err
	}
	key := string(loc) + "\x00" + id.String()
	if x, ok := s.indexes.get(key); ok {
		return newTOCTree(ctx, p, x, nil), nil
	}
	img, err := p.Data(ctx)
	if errors.Is(err, pe.ErrNoData) {
		return nil, badRequest("snapshot %s has no file tree", id)
	}
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", id, err)
	}
	toc, ok := img.(pe.TableOfContents)
	if !ok {
		img.Close()
		return s.mountSnapshot(ctx, p, loc)
	}
	entries, err := toc.TOC(ctx)
	if err != nil {
		img.Close()
		return nil, fmt.Errorf("table of contents of %s: %w", id, err)
	}
	mtime := time.Unix(0, 0)
	if info, err := p.Info(ctx); err == nil && info.Created != nil {
		mtime = *info.Created
	}
	x := browse.NewIndex(entries, mtime)
	s.indexes.put(key, x)
	return newTOCTree(ctx, p, x, img), nil
}

// mountSnapshot is the tree of a disk snapshot: its partitions through a
// recovery mount, where the appliance makes them (local snapshots, whose
// image is a file).
func (s *server) mountSnapshot(ctx context.Context, p pe.ProtectedEntity, loc api.SnapshotLocation) (snapshotTree, error) {
	if s.cfg.RecoveryMounts == nil {
		return nil, badRequest("snapshot %s has no file tree (this appliance makes no recovery mounts of disks)", p.ID())
	}
	if loc != api.Local {
		return nil, badRequest("snapshot %s: the partitions of disk snapshots in the repository cannot be browsed yet: restore it first", p.ID())
	}
	parts, release, err := s.cfg.RecoveryMounts.Acquire(ctx, p)
	if errors.Is(err, pe.ErrNotSupported) {
		return nil, &httpError{http.StatusBadRequest, err}
	}
	if err != nil {
		return nil, err
	}
	roots := make(map[string]*os.Root, len(parts))
	for _, part := range parts {
		roots[part.Name] = part.Root
	}
	return mountTree{Mounted: browse.Mounted{Partitions: roots, Names: s.dirNames, Key: p.ID().String()}, release: release}, nil
}

// browseError marks the browse package's refusals as the client's.
func browseError(err error) error {
	if errors.Is(err, browse.ErrBadPath) || errors.Is(err, browse.ErrNotFile) {
		return &httpError{http.StatusBadRequest, err}
	}
	return err
}

func (s *server) ListSnapshotFiles(ctx context.Context, req api.ListSnapshotFilesRequestObject) (api.ListSnapshotFilesResponseObject, error) {
	dir := deref(req.Params.Path)
	if err := browse.CheckPath(dir); err != nil {
		return nil, browseError(err)
	}
	limit := pageLimit
	if l := req.Params.Limit; l != nil {
		if *l < 1 {
			return nil, badRequest("limit %d: want at least 1", *l)
		}
		limit = min(limit, int(*l))
	}
	tree, err := s.openSnapshot(ctx, req.ProtectedEntityID, req.Params.Location)
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	page, err := tree.List(dir, deref(req.Params.Cursor), limit)
	if err != nil {
		return nil, browseError(err)
	}
	out := api.ListSnapshotFiles200JSONResponse{Path: dir, Entries: make([]api.FileEntry, 0, len(page.Entries))}
	for _, e := range page.Entries {
		out.Entries = append(out.Entries, apiEntry(e))
	}
	if page.Next != "" {
		out.NextCursor = &page.Next
	}
	return out, nil
}

// searchLimit is the default page of searchSnapshotFiles.
const searchLimit = 100

func (s *server) SearchSnapshotFiles(ctx context.Context, req api.SearchSnapshotFilesRequestObject) (api.SearchSnapshotFilesResponseObject, error) {
	q := req.Params.Q
	if q == "" || len(q) > 255 {
		return nil, badRequest("q: want 1 to 255 bytes")
	}
	limit := searchLimit
	if l := req.Params.Limit; l != nil {
		if *l < 1 {
			return nil, badRequest("limit %d: want at least 1", *l)
		}
		limit = min(pageLimit, int(*l))
	}
	tree, err := s.openSnapshot(ctx, req.ProtectedEntityID, req.Params.Location)
	if err != nil {
		return nil, err
	}
	defer tree.Close()
	toc, ok := tree.(tocTree)
	if !ok {
		return nil, badRequest("search is for fs snapshots; browse the partitions of disk snapshots")
	}
	found, next, err := toc.Search(q, deref(req.Params.Cursor), limit)
	if err != nil {
		return nil, browseError(err)
	}
	out := api.SearchSnapshotFiles200JSONResponse{Matches: make([]api.FileMatch, 0, len(found))}
	for _, m := range found {
		out.Matches = append(out.Matches, api.FileMatch{Path: m.Path, Entry: apiEntry(m.Entry)})
	}
	if next != "" {
		out.NextCursor = &next
	}
	return out, nil
}

func apiEntry(e browse.Entry) api.FileEntry {
	fe := api.FileEntry{Name: e.Name, Kind: api.FileEntryKind(e.Kind), Size: e.Size, Modified: e.Modified.UTC()}
	if e.LinkTarget != "" {
		fe.LinkTarget = &e.LinkTarget
	}
	return fe
}

func (s *server) DownloadSnapshotFile(ctx context.Context, req api.DownloadSnapshotFileRequestObject) (api.DownloadSnapshotFileResponseObject, error) {
	p := deref(req.Params.Path)
	if err := browse.CheckPath(p); err != nil {
		return nil, browseError(err)
	}
	tree, err := s.openSnapshot(ctx, req.ProtectedEntityID, req.Params.Location)
	if err != nil {
		return nil, err
	}
	content, mtime, err := tree.Open(p)
	if err != nil {
		tree.Close()
		return nil, browseError(err)
	}
	r, _ := ctx.Value(requestKey{}).(*http.Request)
	return fileDownload{r: r, tree: tree, content: content, name: path.Base(p), mtime: mtime}, nil
}

// fileDownload answers a file of a snapshot with http.ServeContent, which
// does Range and If-Range.
type fileDownload struct {
	r       *http.Request
	tree    snapshotTree
	content io.ReadSeekCloser
	name    string
	mtime   time.Time
}

func (d fileDownload) VisitDownloadSnapshotFileResponse(w http.ResponseWriter) error {
	defer d.tree.Close()
	defer d.content.Close()
	if d.r == nil {
		return errors.New("download: no request in the context")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": d.name}))
	http.ServeContent(w, d.r, "", d.mtime, d.content)
	return nil
}

// ctxReaderAt reads an image for one request: its reads stop when the
// client goes.
type ctxReaderAt struct {
	ctx context.Context
	img pe.Image
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) { return pe.ReadAt(c.ctx, c.img, p, off) }

func (s *server) DownloadSnapshotFolder(ctx context.Context, req api.DownloadSnapshotFolderRequestObject) (api.DownloadSnapshotFolderResponseObject, error) {
	dir := deref(req.Params.Path)
	if err := browse.CheckPath(dir); err != nil {
		return nil, browseError(err)
	}
	tree, err := s.openSnapshot(ctx, req.ProtectedEntityID, req.Params.Location)
	if err != nil {
		return nil, err
	}
	// Refuse what is not a directory before the answer starts.
	if _, err := tree.List(dir, "", 1); err != nil {
		tree.Close()
		return nil, browseError(err)
	}
	name := "snapshot"
	if dir != "" && zipSafe(path.Base(dir)) {
		name = path.Base(dir)
	}
	return folderZip{ctx: ctx, tree: tree, dir: dir, name: name, log: s.log}, nil
}

// folderZip streams a folder of a snapshot as a zip: each file is read
// and compressed as it goes out.
type folderZip struct {
	ctx  context.Context
	tree snapshotTree
	dir  string
	name string
	log  *slog.Logger
}

func (z folderZip) VisitDownloadSnapshotFolderResponse(w http.ResponseWriter) error {
	defer z.tree.Close()
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": z.name + ".zip"}))
	zw := zip.NewWriter(w)
	err := z.write(zw)
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		// The status is sent: the client sees a zip cut short, without
		// its central directory, which no unzip takes as whole.
		z.log.Warn("zip of a snapshot folder cut short", "dir", z.dir, "err", err)
	}
	return nil
}

// write writes the folder and everything below it into zw.
func (z folderZip) write(zw *zip.Writer) error {
	if _, err := zw.CreateHeader(&zip.FileHeader{Name: z.name + "/", Modified: time.Now()}); err != nil {
		return err
	}
	var leftOut []string // directories left out, with what is below them
	err := z.tree.Walk(z.dir, func(p string, e browse.Entry) error {
		if err := z.ctx.Err(); err != nil {
			return err
		}
		for _, d := range leftOut {
			if strings.HasPrefix(p, d+"/") {
				return nil
			}
		}
		if !zipSafe(path.Base(p)) {
			z.log.Warn("zip of a snapshot folder: a name unsafe in a zip left out", "path", p)
			if e.Kind == browse.KindDir {
				leftOut = append(leftOut, p)
			}
			return nil
		}
		rel := z.name + "/" + strings.TrimPrefix(strings.TrimPrefix(p, z.dir), "/")
		if e.Kind == browse.KindDir {
			_, err := zw.CreateHeader(&zip.FileHeader{Name: rel + "/", Modified: e.Modified})
			return err
		}
		f, _, err := z.tree.Open(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		defer f.Close()
		out, err := zw.CreateHeader(&zip.FileHeader{Name: rel, Modified: e.Modified, Method: zip.Deflate})
		if err != nil {
			return err
		}
		_, err = io.Copy(out, f)
		return err
	})
	return err
}

// zipSafe tells whether name, legal in a Linux filesystem, is safe as an
// element of a zip entry's name. Windows extractors take "\" for a
// separator (so "..\..\x" leaves the target folder) and ":" for a drive
// or an NTFS stream, and control characters are what no extractor
// agrees on. Such entries are left out rather than renamed, which could
// collide with a name that is there.
func zipSafe(name string) bool {
	return !strings.ContainsFunc(name, func(r rune) bool {
		return r == '\\' || r == ':' || unicode.IsControl(r)
	})
}
