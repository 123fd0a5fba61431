package usecase

import (
	"context"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Copy copies src (a snapshot, or a zip) into a PE of type typ, named by
// opts.Name where opts.Mode wants a name, and returns it.
func (s *Service) Copy(ctx context.Context, src pe.ProtectedEntity, typ string, opts pe.CopyOptions, progress pe.Progress) (pe.ProtectedEntity, error) {
	tm, err := s.m.Type(ctx, typ)
	if err != nil {
		return nil, err
	}
	dest := typ
	if opts.Name != "" {
		dest += ":" + opts.Name
	}
	out, err := s.copy(ctx, tm, src, dest, opts, progress)
	if err != nil {
		return nil, fmt.Errorf("copy %s to %s (%s): %w", src.ID(), dest, opts.Mode, err)
	}
	return out, nil
}

// copy is the copy that Copy and Restore share; dest names the target
// for the log.
func (s *Service) copy(ctx context.Context, tm pe.TypeManager, src pe.ProtectedEntity, dest string, opts pe.CopyOptions, progress pe.Progress) (pe.ProtectedEntity, error) {
	opts.Progress = progress
	if opts.GrantsUntrustedPrivileges(src) {
		// An administrator's explicit choice, to be found again.
		s.log.Warn("restoring untrusted input with its privileges (owners, setuid/setgid, capabilities, trusted/security xattrs, device nodes) as asked (cp/restore --keep-privileges, or keepPrivileges in the API)",
			"src", src.ID().String(), "dest", dest)
	}
	return tm.Copy(ctx, src, opts)
}
