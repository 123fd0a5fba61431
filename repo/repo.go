// Package repo is the backup repository: PE snapshots cut into chunks
// (fixed and aligned for disk images, content-defined for streams), named
// by the SHA-256 of their content, zstd-compressed, sealed with AES-256-GCM
// (with the chunk ID as additional data, so a blob opens only as its chunk)
// and packed into pack objects in a backend (a directory or S3).
//
// Objects:
//
//	config                       format version, KDF parameters, the sealed master key
//	data/<id[:2]>/<id>           packs: sealed blobs, then a sealed header listing them
//	index/<random>               sealed lists of packs and their blobs, for dedup
//	snapshots/<peid>/index       a snapshot's chunk map: offset → chunk, pack, position
//	snapshots/<peid>/info        its PE info and the index's hash, written last: the commit
//	locks/<random>               who uses the repository (shared or exclusive)
//
// A snapshot's index holds where each chunk is, so reading a snapshot
// needs nothing else; prune deletes only packs no snapshot uses at all,
// so those positions never move. Every snapshot is a logical full.
//
// Several processes may share a repository (appliances on one bucket),
// and one process may run any number of backups, restores and mounts at
// once. Each Repository keeps one long-lived index of the chunks stored
// (index.go), which every backup refreshes under its shared lock before
// it stores anything, so that it dedups against what all others stored.
// Prune takes the exclusive lock; a backup checks that its lock still
// holds before it commits, so no snapshot names a pack a prune removed.
//
// Format 2 seals a snapshot's index and info with the snapshot's ID as
// additional data, and the info holds the index's hash: a snapshot moved,
// renamed or swapped under another ID does not open. Format 1 snapshots
// stay readable (the IDs written inside them are checked) until Migrate
// seals them again.
package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// formatVersion is the format this package writes snapshots in; it reads
// 1 as well. A repository is raised to it by the first backup or
// migration, so that older versions refuse it rather than fail on its
// newer snapshots.
const formatVersion = 2

// walFormatVersion is the format of a repository that holds PostgreSQL
// WAL: the first WAL file stored raises it, so that versions before WAL
// archiving (whose prune would delete the packs WAL uses) refuse the
// repository rather than destroy the archive.
const walFormatVersion = 3

// ErrWrongPassword is returned when the password does not open the key.
var ErrWrongPassword = errors.New("wrong password or corrupt key")

// ErrPasswordNeeded is returned by Open of an encrypted repository
// without a password.
var ErrPasswordNeeded = errors.New("give its password (ASTROLABE_PASSWORD or --password-file)")

// ErrNotInitialized is returned by Open where no repository is.
var ErrNotInitialized = errors.New("no repository here (run 'astrolabe repo init')")

type config struct {
	Version   int        `json:"version"`
	ID        string     `json:"id"`
	ChunkSize int64      `json:"chunkSize"` // fixed chunks of disk images
	Encrypted bool       `json:"encrypted"`
	KDF       *kdfParams `json:"kdf,omitempty"`
	MasterKey []byte     `json:"masterKey,omitempty"` // sealed with the password's key
}

// Repository is an open repository.
type Repository struct {
	be  backend.Backend
	cfg config
	key *key
	log *slog.Logger
	now func() time.Time // Options.Now

	enc *zstd.Encoder
	dec *zstd.Decoder

	cfgMu sync.Mutex // guards cfg.Version, raised by the first backup
	idx   *index     // for dedup; loaded at a backup's first need

	// lockStatEvery bounds how often a long operation confirms that its
	// lock object is still there (tests lower it).
	lockStatEvery time.Duration

	lockMu   sync.Mutex
	released map[string]bool // locks released whose removal failed

	claimMu sync.Mutex
	claims  map[string]chan struct{} // snapshots being backed up: closed when done

	walCache walObjectCache
}

// Options open or create a repository.
type Options struct {
	// Password encrypts the repository; empty with Insecure for none.
	Password string
	Insecure bool
	Logger   *slog.Logger
	// Now is the clock that dates backups and that retention counts
	// from; nil for time.Now. Jobs and tests run on a clock of their own.
	Now func() time.Time
}

const defaultChunkSize = 1 << 20

// Init creates a repository in an empty backend.
func Init(ctx context.Context, be backend.Backend, opts Options) error {
	if _, err := be.Stat(ctx, "config"); err == nil {
		return fmt.Errorf("%s: a repository exists there already", be.Location())
	} else if !errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("%s: %w", be.Location(), err)
	}
	cfg := config{Version: formatVersion, ChunkSize: defaultChunkSize}
	var id [16]byte
	rand.Read(id[:])
	cfg.ID = hex.EncodeToString(id[:])
	switch {
	case opts.Password != "":
		p := kdfParams{N: 1 << 15, R: 8, P: 1, Salt: make([]byte, 32)}
		rand.Read(p.Salt)
		kek, err := deriveKey(opts.Password, p)
		if err != nil {
			return err
		}
		k, err := newKey(kek)
		if err != nil {
			return err
		}
		master := make([]byte, 32)
		rand.Read(master)
		cfg.Encrypted, cfg.KDF, cfg.MasterKey = true, &p, k.seal(nil, master, nil)
	case !opts.Insecure:
		return errors.New("a password is needed (ASTROLABE_PASSWORD or --password-file), or --insecure-no-password for an unencrypted repository")
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return be.Save(ctx, "config", bytes.NewReader(b), int64(len(b)))
}

// Open opens the repository in be.
func Open(ctx context.Context, be backend.Backend, opts Options) (*Repository, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b, err := backend.ReadAll(ctx, be, "config")
	if errors.Is(err, backend.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", be.Location(), ErrNotInitialized)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", be.Location(), err)
	}
	var cfg config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s: config: %w", be.Location(), err)
	}
	if cfg.Version < 1 || cfg.Version > walFormatVersion {
		return nil, fmt.Errorf("%s: repository format %d, this astrolabe reads 1 to %d", be.Location(), cfg.Version, walFormatVersion)
	}
	r := &Repository{be: be, cfg: cfg, log: opts.Logger, now: opts.Now, idx: newIndex(), claims: map[string]chan struct{}{}, released: map[string]bool{}, lockStatEvery: time.Minute}
	if cfg.Encrypted {
		if opts.Password == "" {
			return nil, fmt.Errorf("%s is encrypted: %w", be.Location(), ErrPasswordNeeded)
		}
		if cfg.KDF == nil {
			return nil, fmt.Errorf("%s: config without key parameters", be.Location())
		}
		kek, err := deriveKey(opts.Password, *cfg.KDF)
		if err != nil {
			return nil, err
		}
		k, err := newKey(kek)
		if err != nil {
			return nil, err
		}
		master, err := k.open(cfg.MasterKey, nil)
		if err != nil {
			return nil, ErrWrongPassword
		}
		if r.key, err = newKey(master); err != nil {
			return nil, err
		}
	}
	if r.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1)); err != nil {
		return nil, err
	}
	if r.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(64<<20)); err != nil {
		return nil, err
	}
	return r, nil
}

// upgradeConfig raises the config's format version to version (unless it
// is there already) before something of that format is written: a format
// 2 snapshot, the first WAL file.
func (r *Repository) upgradeConfig(ctx context.Context, version int) error {
	r.cfgMu.Lock()
	defer r.cfgMu.Unlock()
	if r.cfg.Version >= version {
		return nil
	}
	cfg := r.cfg
	cfg.Version = version
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := r.be.Save(ctx, "config", bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("upgrade the repository to format %d: %w", version, err)
	}
	r.log.Info("repository upgraded", "format", version, "location", r.Location())
	r.cfg.Version = cfg.Version // only: backups read the rest meanwhile
	return nil
}

// Close releases the repository's resources.
func (r *Repository) Close() error {
	r.dec.Close()
	return r.enc.Close()
}

// Location says where the repository is.
func (r *Repository) Location() string { return r.be.Location() }

// ID is the repository's own: the same at every location it is reached by.
func (r *Repository) ID() string { return r.cfg.ID }

// chunkID names a chunk by its content.
func chunkID(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// encode compresses and seals b; the result is what a pack stores. aad
// is authenticated with it: a chunk's ID, nil for other objects.
func (r *Repository) encode(dst, b, aad []byte) []byte {
	return r.key.seal(dst, r.enc.EncodeAll(b, make([]byte, 0, len(b)/2+64)), aad)
}

// decode opens and decompresses a stored blob.
func (r *Repository) decode(sealed []byte, rawLen int, aad []byte) ([]byte, error) {
	z, err := r.key.open(sealed, aad)
	if err != nil {
		return nil, err
	}
	out, err := r.dec.DecodeAll(z, make([]byte, 0, rawLen))
	if err != nil {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	return out, nil
}

// loadChunk reads a chunk and checks that it is what its ID says: a
// damaged chunk is an error, never wrong bytes.
func (r *Repository) loadChunk(ctx context.Context, c chunkRef, verify bool) ([]byte, error) {
	rc, err := r.be.Load(ctx, packName(c.Pack), c.POff, c.PLen)
	if err != nil {
		return nil, fmt.Errorf("chunk %.16s in pack %.16s: %w", c.ID, c.Pack, err)
	}
	defer rc.Close()
	sealed := make([]byte, c.PLen)
	if _, err := ioReadFull(rc, sealed); err != nil {
		return nil, fmt.Errorf("chunk %.16s in pack %.16s: %w", c.ID, c.Pack, err)
	}
	b, err := r.openChunk(sealed, c.ID, c.Len, verify)
	if err != nil {
		return nil, fmt.Errorf("chunk %.16s in pack %.16s %w", c.ID, c.Pack, err)
	}
	return b, nil
}

// openChunk opens a stored chunk of raw bytes; its error reads after
// the chunk's name ("is damaged: ...").
func (r *Repository) openChunk(sealed []byte, id string, raw int64, verify bool) ([]byte, error) {
	b, err := r.decode(sealed, int(min(max(raw, 0), cdcMax)), []byte(id)) // a capacity hint: raw is not trusted before the chunk opens
	if err != nil {
		return nil, fmt.Errorf("is damaged: %w", err)
	}
	if int64(len(b)) != raw {
		return nil, fmt.Errorf("is damaged: %d bytes, want %d", len(b), raw)
	}
	// Sealed chunks are authenticated together with their ID: a chunk
	// that opens is that chunk. Unsealed ones are hashed again; so are
	// all chunks when verify is asked for (check --read-data).
	if (r.key == nil || verify) && chunkID(b) != id {
		return nil, errors.New("is damaged: content does not match its ID")
	}
	return b, nil
}

// sealJSON encodes v as a compressed, sealed object; aad is
// authenticated with it (a snapshot's ID for its objects, else nil).
func (r *Repository) sealJSON(v any, aad []byte) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return r.encode(nil, b, aad), nil
}

func (r *Repository) openJSON(sealed []byte, v any, aad []byte) error {
	b, err := r.decode(sealed, len(sealed)*4, aad)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func (r *Repository) saveJSON(ctx context.Context, name string, v any) error {
	b, err := r.sealJSON(v, nil)
	if err != nil {
		return err
	}
	return r.saveObject(ctx, name, b)
}

func (r *Repository) saveObject(ctx context.Context, name string, b []byte) error {
	return r.be.Save(ctx, name, bytes.NewReader(b), int64(len(b)))
}

// The packer's view of the repository (packStore).

func (r *Repository) lookup(chunk string) (blobLoc, bool) { return r.idx.lookup(chunk) }

func (r *Repository) savePack(ctx context.Context, id string, data []byte) error {
	return r.saveObject(ctx, packName(id), data)
}

func (r *Repository) packUploaded(id string, blobs []packBlob) { r.idx.added(id, blobs) }

func (r *Repository) loadJSON(ctx context.Context, name string, v any) error {
	b, err := backend.ReadAll(ctx, r.be, name)
	if err != nil {
		return err
	}
	if err := r.openJSON(b, v, nil); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func packName(id string) string { return "data/" + id[:2] + "/" + id }

// listPacks lists data/: each pack's ID and size. Objects whose names
// are not pack IDs are left out (Check reports them).
func (r *Repository) listPacks(ctx context.Context) (map[string]int64, error) {
	packs, _, err := r.listData(ctx)
	return packs, err
}

// listData lists data/: the packs (ID → size), and the names of the
// objects that are not packs (a name that is no pack ID, or a pack in
// another directory than its ID's).
func (r *Repository) listData(ctx context.Context) (packs map[string]int64, strays []string, err error) {
	packs = map[string]int64{}
	err = r.be.List(ctx, "data/", func(name string, size int64) error {
		id := name[strings.LastIndex(name, "/")+1:]
		if validID(id) && packName(id) == name {
			packs[id] = size
		} else {
			strays = append(strays, name)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list packs: %w", err)
	}
	return packs, strays, nil
}

func randomName() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
