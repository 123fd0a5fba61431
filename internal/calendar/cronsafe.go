package calendar

import (
	"fmt"

	"github.com/robfig/cron/v3"
)

// parseCronLine is robfig/cron's parser, which panics on some lines
// ("TZ=", "CRON_TZ=" with nothing after it: it slices before checking);
// a schedule comes from jobs.json and the REST API, and a bad one must be
// an error, never a crash of the appliance.
func parseCronLine(expr string) (s cron.Schedule, err error) {
	defer func() {
		if p := recover(); p != nil {
			s, err = nil, fmt.Errorf("not a cron line (%v)", p)
		}
	}()
	return cronParser.Parse(expr)
}
