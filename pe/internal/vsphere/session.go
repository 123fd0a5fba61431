// Package vsphere is what the vSphere PE types (ivd, vm) share: their
// configuration, a vCenter session that logs in again by itself, retries
// of the faults that pass, and access to the bytes of virtual disks.
package vsphere

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Config is pes/ivd.pe.json and pes/vm.pe.json.
type Config struct {
	VCenter      string `json:"vcenter"` // https://host:port/sdk
	User         string `json:"user"`
	Password     string `json:"password,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty"`
	Insecure     bool   `json:"insecure,omitempty"`
	Thumbprint   string `json:"thumbprint,omitempty"`
	CAFile       string `json:"caFile,omitempty"`
	Datacenter   string `json:"datacenter,omitempty"`
	// Where restores go: the datastore (default: the datacenter's only
	// one), and for VMs the resource pool and folder (inventory paths).
	Datastore    string `json:"datastore,omitempty"`
	ResourcePool string `json:"resourcePool,omitempty"`
	Folder       string `json:"folder,omitempty"`
	// VDDK, when set, moves the bytes with VMware's libvixDiskLib (a
	// build with the tag vddk) instead of the datastore's file access.
	VDDK *VDDKConfig `json:"vddk,omitempty"`
}

// VDDKConfig says where libvixDiskLib is and how it reaches disks.
type VDDKConfig struct {
	Library    string   `json:"library"`              // libvixDiskLib.so path, or the directory holding it
	Transports []string `json:"transports,omitempty"` // tried in order; default nbdssl, nbd
}

// Session is one vCenter login shared by a type manager's operations.
type Session struct {
	Config Config
	Log    *slog.Logger
	// Access moves disk bytes.
	Access DiskAccess
	// RetryDelay is Retry's first backoff; it doubles per attempt.
	RetryDelay time.Duration

	mu sync.Mutex
	c  *govmomi.Client
}

// NewSession checks cfg for PE type typ. It does not connect: a vCenter
// that is down must not keep the other PE types from working.
func NewSession(typ string, cfg Config, log *slog.Logger) (*Session, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("%s password file: %w", typ, err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
	}
	if cfg.VCenter == "" || cfg.User == "" {
		return nil, fmt.Errorf("%s: vcenter and user must be set", typ)
	}
	if _, err := soap.ParseURL(cfg.VCenter); err != nil {
		return nil, fmt.Errorf("%s: vcenter URL: %w", typ, err)
	}
	s := &Session{Config: cfg, Log: log, Access: HTTPAccess{}, RetryDelay: time.Second}
	if cfg.VDDK != nil {
		a, err := newVDDKAccess(cfg, log)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", typ, err)
		}
		s.Access = a
	}
	return s, nil
}

// Client returns a logged-in client, logging in again when the session
// was lost (expiry, a restart of vCenter, a changed password).
func (s *Session) Client(ctx context.Context) (*govmomi.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		// UserSession needs no privilege, unlike SessionIsActive.
		if us, err := s.c.SessionManager.UserSession(ctx); err == nil && us != nil {
			return s.c, nil
		}
		s.Log.Info("vCenter session lost; logging in again", "vcenter", s.Config.VCenter)
		s.c = nil
	}
	u, err := soap.ParseURL(s.Config.VCenter)
	if err != nil {
		return nil, fmt.Errorf("vcenter URL: %w", err)
	}
	sc := soap.NewClient(u, s.Config.Insecure)
	if s.Config.Thumbprint != "" {
		sc.SetThumbprint(u.Host, s.Config.Thumbprint)
	}
	if s.Config.CAFile != "" {
		if err := sc.SetRootCAs(s.Config.CAFile); err != nil {
			return nil, fmt.Errorf("vcenter CA: %w", err)
		}
	}
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("vcenter %s: %w", u.Host, err)
	}
	c := &govmomi.Client{Client: vc, SessionManager: session.NewManager(vc)}
	if err := c.Login(ctx, url.UserPassword(s.Config.User, s.Config.Password)); err != nil {
		return nil, fmt.Errorf("vcenter %s: login as %s: %w", u.Host, s.Config.User, err)
	}
	// Keep the session alive between operations.
	c.Client.RoundTripper = keepalive.NewHandlerSOAP(c.Client.RoundTripper, 5*time.Minute, nil)
	s.c = c
	return c, nil
}

// Finder returns a client, the configured datacenter and a finder set to
// it.
func (s *Session) Finder(ctx context.Context) (*govmomi.Client, *object.Datacenter, *find.Finder, error) {
	c, err := s.Client(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	f := find.NewFinder(c.Client)
	dc, err := f.DatacenterOrDefault(ctx, s.Config.Datacenter)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("datacenter: %w", err)
	}
	f.SetDatacenter(dc)
	return c, dc, f, nil
}

// OpenImage opens the disk ref names, read-only, as a pe.Image.
func (s *Session) OpenImage(ctx context.Context, ref DiskRef) (pe.Image, error) {
	c, err := s.Client(ctx)
	if err != nil {
		return nil, err
	}
	d, err := s.Access.Open(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	return NewImage(d), nil
}

// WriteDisk makes the disk ref names hold src's bytes (see
// DiskAccess.Write).
func (s *Session) WriteDisk(ctx context.Context, ref DiskRef, src pe.Image, fresh bool, progress pe.Progress) error {
	c, err := s.Client(ctx)
	if err != nil {
		return err
	}
	return s.Access.Write(ctx, c, ref, src, fresh, progress)
}

// RestoreDatastore is the configured datastore, or the datacenter's only
// one.
func (s *Session) RestoreDatastore(ctx context.Context) (*object.Datastore, error) {
	_, _, f, err := s.Finder(ctx)
	if err != nil {
		return nil, err
	}
	ds, err := f.DatastoreOrDefault(ctx, s.Config.Datastore)
	if err != nil {
		return nil, fmt.Errorf("datastore for restores (set \"datastore\" in the PE config): %w", err)
	}
	return ds, nil
}

// retryAttempts bounds Retry: with a 1 s first delay the last attempt
// starts 15 s after the first.
const retryAttempts = 5

// Retry runs op until it succeeds, fails with a fault that does not
// pass, or attempts run out, with doubling backoff.
func (s *Session) Retry(ctx context.Context, what string, op func() error) error {
	delay := s.RetryDelay
	var err error
	for attempt := 1; attempt <= retryAttempts; attempt++ {
		if err = op(); err == nil || !Transient(err) {
			return err
		}
		if attempt == retryAttempts {
			break
		}
		s.Log.Warn("vCenter: retrying", "op", what, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
	return fmt.Errorf("gave up after %d attempts: %w", retryAttempts, err)
}

// Transient tells the faults that pass: the object is busy or the
// connection dropped.
func Transient(err error) bool {
	return IsFault[*types.InvalidState](err) || IsFault[*types.TaskInProgress](err) ||
		IsFault[*types.FileLocked](err) || strings.Contains(err.Error(), "connection reset")
}

// IsFault reports whether err is a vSphere fault of type T.
func IsFault[T types.BaseMethodFault](err error) bool {
	if err == nil {
		return false
	}
	if soap.IsSoapFault(err) {
		if _, ok := soap.ToSoapFault(err).VimFault().(T); ok {
			return true
		}
	}
	if soap.IsVimFault(err) {
		if _, ok := soap.ToVimFault(err).(T); ok {
			return true
		}
	}
	var te interface{ Fault() types.BaseMethodFault }
	if errors.As(err, &te) {
		_, ok := te.Fault().(T)
		return ok
	}
	return false
}
