package rest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"sort"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/browse"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// maxIndexes bounds the file indexes of snapshots kept between requests:
// one is what a page browsing a snapshot needs, a few serve a few pages.
const maxIndexes = 4

// indexCache keeps the file indexes of the snapshots browsed last, so
// that each page of a directory does not read the table of contents
// again. Snapshots do not change; a deleted one is refused before its
// index is looked up (openSnapshot).
type indexCache struct {
	mu    sync.Mutex
	max   int
	keys  []string // least recently used first
	byKey map[string]*browse.Index
}

func newIndexCache(max int) *indexCache {
	return &indexCache{max: max, byKey: map[string]*browse.Index{}}
}

func (c *indexCache) get(key string) (*browse.Index, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	x, ok := c.byKey[key]
	if ok {
		c.touch(key)
	}
	return x, ok
}

func (c *indexCache) put(key string, x *browse.Index) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[key]; !ok && len(c.keys) >= c.max {
		delete(c.byKey, c.keys[0])
		c.keys = c.keys[1:]
	}
	c.byKey[key] = x
	c.touch(key)
}

func (c *indexCache) touch(key string) {
	for i, k := range c.keys {
		if k == key {
			c.keys = append(c.keys[:i], c.keys[i+1:]...)
			break
		}
	}
	c.keys = append(c.keys, key)
}

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

// openSnapshot opens the snapshot id at location and its file index.
// The caller closes the image.
func (s *server) openSnapshot(ctx context.Context, raw string, location *api.SnapshotLocation) (pe.Image, *browse.Index, error) {
	id, err := parseID(raw)
	if err != nil {
		return nil, nil, err
	}
	if !id.HasSnapshot() {
		return nil, nil, badRequest("%s is not a snapshot", id)
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
			return nil, nil, notConfigured("the backup repository")
		}
		p, err = s.cfg.Repository.OpenRepositorySnapshot(ctx, id)
	default:
		return nil, nil, badRequest("location %q: want local or repository", loc)
	}
	if err != nil {
		return nil, nil, err
	}
	img, err := p.Data(ctx)
	if errors.Is(err, pe.ErrNoData) {
		return nil, nil, badRequest("snapshot %s has no file tree", id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("data of %s: %w", id, err)
	}
	key := string(loc) + "\x00" + id.String()
	if x, ok := s.indexes.get(key); ok {
		return img, x, nil
	}
	toc, ok := img.(pe.TableOfContents)
	if !ok {
		img.Close()
		return nil, nil, badRequest("snapshot %s has no file tree (only fs snapshots have one)", id)
	}
	entries, err := toc.TOC(ctx)
	if err != nil {
		img.Close()
		return nil, nil, fmt.Errorf("table of contents of %s: %w", id, err)
	}
	mtime := time.Unix(0, 0)
	if info, err := p.Info(ctx); err == nil && info.Created != nil {
		mtime = *info.Created
	}
	x := browse.NewIndex(entries, mtime)
	s.indexes.put(key, x)
	return img, x, nil
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
	img, x, err := s.openSnapshot(ctx, req.ProtectedEntityID, req.Params.Location)
	if err != nil {
		return nil, err
	}
	img.Close()
	page, err := x.List(dir, deref(req.Params.Cursor), limit)
	if err != nil {
		return nil, browseError(err)
	}
	out := api.ListSnapshotFiles200JSONResponse{Path: dir, Entries: make([]api.FileEntry, 0, len(page.Entries))}
	for _, e := range page.Entries {
		fe := api.FileEntry{Name: e.Name, Kind: api.FileEntryKind(e.Kind), Size: e.Size, Modified: e.Modified.UTC()}
		if e.LinkTarget != "" {
			fe.LinkTarget = &e.LinkTarget
		}
		out.Entries = append(out.Entries, fe)
	}
	if page.Next != "" {
		out.NextCursor = &page.Next
	}
	return out, nil
}

func (s *server) DownloadSnapshotFile(ctx context.Context, req api.DownloadSnapshotFileRequestObject) (api.DownloadSnapshotFileResponseObject, error) {
	p := deref(req.Params.Path)
	if err := browse.CheckPath(p); err != nil {
		return nil, browseError(err)
	}
	img, x, err := s.openSnapshot(ctx, req.ProtectedEntityID, req.Params.Location)
	if err != nil {
		return nil, err
	}
	off, size, mtime, err := x.File(p)
	if err != nil {
		img.Close()
		return nil, browseError(err)
	}
	r, _ := ctx.Value(requestKey{}).(*http.Request)
	return fileDownload{r: r, img: img, name: path.Base(p), off: off, size: size, mtime: mtime}, nil
}

// fileDownload answers a file of a snapshot with http.ServeContent, which
// does Range, If-Range and HEAD.
type fileDownload struct {
	r         *http.Request
	img       pe.Image
	name      string
	off, size int64
	mtime     time.Time
}

func (d fileDownload) VisitDownloadSnapshotFileResponse(w http.ResponseWriter) error {
	defer d.img.Close()
	if d.r == nil {
		return errors.New("download: no request in the context")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": d.name}))
	http.ServeContent(w, d.r, "", d.mtime, io.NewSectionReader(ctxReaderAt{d.r.Context(), d.img}, d.off, d.size))
	return nil
}

// ctxReaderAt reads an image for one request: its reads stop when the
// client goes.
type ctxReaderAt struct {
	ctx context.Context
	img pe.Image
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) { return pe.ReadAt(c.ctx, c.img, p, off) }
