package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
)

// state is what the daemon restores after a restart: the exports and
// mounts it was asked to start. It is rewritten atomically on each change.
type state struct {
	path string
	mu   sync.Mutex
	data stateData
}

type stateData struct {
	Exports []exportState `json:"exports"`
	Mounts  []mountState  `json:"mounts"`
}

type exportState struct {
	ID     string `json:"id"`
	Target string `json:"target,omitempty"` // writable exports: the PE that takes the writes
	// Name is a writable export's NBD name (the ID and a secret token);
	// one recorded before names had tokens gets a new one on restore.
	Name string `json:"name,omitempty"`
}

type mountState struct {
	ID         string `json:"id"`
	Path       string `json:"path"`
	AllowOther bool   `json:"allowOther,omitempty"`
	Force      bool   `json:"force,omitempty"`
}

func openState(path string) (*state, error) {
	st := &state{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("appliance state: %w", err)
	}
	if err := json.Unmarshal(b, &st.data); err != nil {
		return nil, fmt.Errorf("appliance state %s: %w (fix or remove the file)", path, err)
	}
	return st, nil
}

// update changes the state under its lock and saves it.
func (st *state) update(fn func(*stateData)) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	fn(&st.data)
	err := atomicfile.Write(st.path, 0o600, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st.data)
	})
	if err != nil {
		return fmt.Errorf("save appliance state: %w", err)
	}
	return nil
}

func (st *state) snapshot() stateData {
	st.mu.Lock()
	defer st.mu.Unlock()
	return stateData{
		Exports: append([]exportState(nil), st.data.Exports...),
		Mounts:  append([]mountState(nil), st.data.Mounts...),
	}
}
