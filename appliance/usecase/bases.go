package usecase

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// BasesFile, in the state directory, records the snapshot the last backup
// of each live PE into each repository took.
const BasesFile = "backup-bases.json"

// bases is the record of BasesFile. A backup of a live PE snapshots it;
// the newest such snapshot is kept, because the next backup into the same
// repository reads only the blocks changed since it (a disk's block
// hashes, a VM's CBT change ID are the local snapshot's). An older one is
// deleted once a newer backup has taken its place. Only snapshots
// recorded here are ever deleted: a user's own never are.
type bases struct {
	path string
}

type basesFile struct {
	// Bases maps a repository's ID to, per PE, the snapshot kept.
	Bases map[string]map[string]string `json:"bases"`
}

// replace records snap as the base of its PE in the repository repoID
// and returns the snapshot it replaces, zero if there is none or if
// another repository's record still keeps it.
func (b bases) replace(repoID string, snap pe.ID) (old pe.ID, err error) {
	err = b.locked(func(f *basesFile) error {
		pid := snap.Base().String()
		prev := f.Bases[repoID][pid]
		if f.Bases[repoID] == nil {
			f.Bases[repoID] = map[string]string{}
		}
		f.Bases[repoID][pid] = snap.String()
		if prev == "" || prev == snap.String() {
			return nil
		}
		for _, perPE := range f.Bases {
			if perPE[pid] == prev {
				return nil
			}
		}
		var err error
		old, err = pe.ParseID(prev)
		if err != nil {
			return fmt.Errorf("%s: %q: %w", b.path, prev, err)
		}
		return nil
	})
	return old, err
}

// locked runs change on the record under an exclusive lock (the CLI and
// the appliance's jobs may back up at once), and writes it after.
func (b bases) locked(change func(*basesFile) error) error {
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(b.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", b.path, err)
	}
	f := basesFile{Bases: map[string]map[string]string{}}
	data, err := os.ReadFile(b.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		// A damaged record loses which snapshots were taken for backups:
		// they are then kept (never a user's deleted), and the next
		// backups start a new record.
		if err := json.Unmarshal(data, &f); err != nil || f.Bases == nil {
			f = basesFile{Bases: map[string]map[string]string{}}
		}
	}
	if err := change(&f); err != nil {
		return err
	}
	return atomicfile.Write(b.path, 0o600, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(f)
	})
}
