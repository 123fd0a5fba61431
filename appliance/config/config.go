// Package config reads and writes the appliance's configuration directory,
// laid out as the reference's: pes/<type>.pe.json per PE type and an
// optional s3config.json.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	pedisk "github.com/astrolabe-appliance/astrolabe/pe/disk"
	pefs "github.com/astrolabe-appliance/astrolabe/pe/fs"
	peivd "github.com/astrolabe-appliance/astrolabe/pe/ivd"
	pepg "github.com/astrolabe-appliance/astrolabe/pe/pg"
	pevm "github.com/astrolabe-appliance/astrolabe/pe/vm"
)

// PEDir is the directory, inside a config dir, holding one <type>.pe.json
// per configured PE type.
const PEDir = "pes"

// StateDir, in the configuration directory, keeps state that is not
// configuration: the S3 buckets' dates, the snapshots kept as backups'
// bases.
const StateDir = "state"

const peSuffix = ".pe.json"

// maxConfigFile bounds what we read of one config file.
const maxConfigFile = 1 << 20

// RootConfig is the configuration of the types that keep their PEs under one
// directory (fs, disk).
type RootConfig struct {
	Root string `json:"root"`
}

// Factory builds a type manager from its config file's raw JSON. dir is the
// config directory, against which relative paths are resolved.
type Factory func(dir string, raw json.RawMessage) (pe.TypeManager, error)

// FactoryOption changes what the factories build.
type FactoryOption func(*factoryOptions)

type factoryOptions struct {
	pgWAL pepg.WALSource
}

// PGWAL gives the pg type's point-in-time restores their WAL: the WAL
// archived in the appliance's repository.
func PGWAL(src pepg.WALSource) FactoryOption {
	return func(o *factoryOptions) { o.pgWAL = src }
}

// Factories returns the PE types this build knows.
func Factories(opts ...FactoryOption) map[string]Factory {
	var o factoryOptions
	for _, opt := range opts {
		opt(&o)
	}
	return map[string]Factory{
		"fs": func(dir string, raw json.RawMessage) (pe.TypeManager, error) {
			root, err := rootOf(dir, raw)
			if err != nil {
				return nil, err
			}
			return pefs.NewTypeManager(root)
		},
		"disk": func(dir string, raw json.RawMessage) (pe.TypeManager, error) {
			root, err := rootOf(dir, raw)
			if err != nil {
				return nil, err
			}
			return pedisk.NewTypeManager(root)
		},
		"pg": func(dir string, raw json.RawMessage) (pe.TypeManager, error) {
			cfg, err := pepg.ParseConfig(dir, raw)
			if err != nil {
				return nil, err
			}
			return pepg.NewTypeManager(cfg, o.pgWAL)
		},
		"ivd": func(dir string, raw json.RawMessage) (pe.TypeManager, error) {
			cfg, err := vsphereConfig("ivd", dir, raw)
			if err != nil {
				return nil, err
			}
			return peivd.NewTypeManager(cfg, nil)
		},
		"vm": func(dir string, raw json.RawMessage) (pe.TypeManager, error) {
			cfg, err := vsphereConfig("vm", dir, raw)
			if err != nil {
				return nil, err
			}
			return pevm.NewTypeManager(cfg, nil)
		},
	}
}

// vsphereConfig reads pes/ivd.pe.json or pes/vm.pe.json; file names in it
// are relative to the config directory.
func vsphereConfig(typ, dir string, raw json.RawMessage) (peivd.Config, error) {
	var cfg peivd.Config
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("%s config: %w", typ, err)
	}
	paths := []*string{&cfg.PasswordFile, &cfg.CAFile}
	if cfg.VDDK != nil {
		paths = append(paths, &cfg.VDDK.Library)
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return cfg, nil
}

func rootOf(dir string, raw json.RawMessage) (string, error) {
	var c RootConfig
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return "", fmt.Errorf("parse: %w", err)
	}
	if c.Root == "" {
		return "", fmt.Errorf(`missing "root"`)
	}
	if !filepath.IsAbs(c.Root) {
		return filepath.Join(dir, c.Root), nil
	}
	return c.Root, nil
}

// Load reads the config directory dir and returns a Manager over every
// configured PE type.
func Load(dir string, factories map[string]Factory) (*pe.StaticManager, error) {
	peDir := filepath.Join(dir, PEDir)
	entries, err := os.ReadDir(peDir)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr != nil {
			return nil, fmt.Errorf("config directory %s does not exist (create one with 'astrolabe init %s')", dir, dir)
		}
		return nil, fmt.Errorf("config directory %s has no %s/ directory (create one with 'astrolabe init')", dir, PEDir)
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var tms []pe.TypeManager
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, peSuffix) || e.IsDir() {
			continue
		}
		typ := strings.TrimSuffix(name, peSuffix)
		path := filepath.Join(peDir, name)
		factory, ok := factories[typ]
		if !ok {
			return nil, fmt.Errorf("%s: unknown PE type %q (known: %s)", path, typ, strings.Join(known(factories), ", "))
		}
		raw, err := readLimited(path)
		if err != nil {
			return nil, err
		}
		tm, err := factory(dir, raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		tms = append(tms, tm)
	}
	if len(tms) == 0 {
		return nil, fmt.Errorf("%s: no PE types configured (no *%s files)", peDir, peSuffix)
	}
	return pe.NewManager(tms...)
}

func readLimited(path string) (json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > maxConfigFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxConfigFile)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

func known(factories map[string]Factory) []string {
	names := make([]string, 0, len(factories))
	for n := range factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// WritePEConfig writes pes/<typ>.pe.json in dir with v as JSON, atomically.
func WritePEConfig(dir, typ string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	peDir := filepath.Join(dir, PEDir)
	if err := os.MkdirAll(peDir, 0o755); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(peDir, typ+peSuffix), 0o644, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// Init writes a working configuration in dir: fs PEs under dir/fs and disk
// PEs under dir/disk. It refuses a dir that already has PE configs.
func Init(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if m, _ := filepath.Glob(filepath.Join(abs, PEDir, "*"+peSuffix)); len(m) > 0 {
		return fmt.Errorf("%s is already a config directory (%s exists); remove it or choose another", abs, m[0])
	}
	for _, typ := range []string{"fs", "disk"} {
		root := filepath.Join(abs, typ)
		if err := os.MkdirAll(root, 0o755); err != nil {
			return fmt.Errorf("init %s: %w", abs, err)
		}
		// Absolute roots keep the files readable by the reference's tools,
		// which resolve paths against their working directory.
		if err := WritePEConfig(abs, typ, RootConfig{Root: root}); err != nil {
			return fmt.Errorf("init %s: %w", abs, err)
		}
	}
	return nil
}
