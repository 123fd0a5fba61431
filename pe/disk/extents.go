package disk

import (
	"fmt"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe/internal/fileimage"
)

// holeCursor answers "is [off, end) entirely a hole?" for ascending offsets
// with as few lseeks as possible: it remembers the data range found last.
// A cursor over a file that cannot tell holes says "no" always.
type holeCursor struct {
	f         *os.File // nil: no hole information, all data
	size      int64
	dataStart int64 // next data region known: [dataStart, dataEnd)
	dataEnd   int64
	known     bool
}

// isHole reports whether [off, end) holds no data. Calls must come with
// non-decreasing off.
func (c *holeCursor) isHole(off, end int64) (bool, error) {
	if c.f == nil {
		return false, nil
	}
	if !c.known || off >= c.dataEnd {
		d, err := fileimage.SeekData(c.f, off, c.size)
		if fileimage.SeekUnsupported(err) {
			c.f = nil
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("seek data at %d: %w", off, err)
		}
		h := c.size
		if d < c.size {
			if h, err = fileimage.SeekHole(c.f, d, c.size); err != nil {
				return false, fmt.Errorf("seek hole at %d: %w", d, err)
			}
		}
		c.dataStart, c.dataEnd, c.known = d, max(h, d+1), true
	}
	return end <= c.dataStart, nil
}
