//go:build !vddk

package ivd

import (
	"errors"
	"log/slog"
)

func newVDDKAccess(Config, *slog.Logger) (diskAccess, error) {
	return nil, errors.New(`"vddk" is configured but this build has no VDDK binding; build with -tags vddk`)
}
