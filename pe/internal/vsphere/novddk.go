//go:build !vddk

package vsphere

import (
	"errors"
	"log/slog"
)

func newVDDKAccess(Config, *slog.Logger) (DiskAccess, error) {
	return nil, errors.New(`"vddk" is configured but this build has no VDDK binding; build with -tags vddk`)
}
