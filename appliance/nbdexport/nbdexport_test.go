package nbdexport

import (
	"fmt"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func TestChangedStates(t *testing.T) {
	changed := []pe.Extent{
		{Offset: 100, Length: 50, Kind: pe.ExtentData},
		{Offset: 150, Length: 50, Kind: pe.ExtentHole}, // adjacent: one run
		{Offset: 400, Length: 100, Kind: pe.ExtentData},
	}
	for _, tc := range []struct {
		off, length int64
		want        string
	}{
		{0, 1000, "[{100 0} {100 1} {200 0} {100 1} {500 0}]"},
		{120, 10, "[{10 1}]"},
		{200, 200, "[{200 0}]"},
		{450, 100, "[{50 1} {50 0}]"},
		{0, 50, "[{50 0}]"},
	} {
		if got := fmt.Sprint(changedStates(changed, tc.off, tc.length)); got != tc.want {
			t.Errorf("changedStates(%d, %d) = %s, want %s", tc.off, tc.length, got, tc.want)
		}
	}
	if got := fmt.Sprint(changedStates(nil, 5, 10)); got != "[{10 0}]" {
		t.Errorf("nothing changed: %s", got)
	}
}
