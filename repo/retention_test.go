package repo

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// dated makes snapshots of disk:a at the given local times of loc.
func dated(t *testing.T, loc *time.Location, times ...string) []Snapshot {
	t.Helper()
	out := make([]Snapshot, len(times))
	for i, s := range times {
		tm, err := time.ParseInLocation(time.DateTime, s, loc)
		if err != nil {
			t.Fatal(err)
		}
		id, err := pe.ParseID(fmt.Sprintf("disk:a:s%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = Snapshot{ID: id, BackedUp: tm}
	}
	return out
}

// kept renders the decisions as "time reasons" lines of the kept snapshots.
func kept(ds []Decision) []string {
	var out []string
	for _, d := range ds {
		if d.Keep {
			out = append(out, d.Snapshot.BackedUp.Format(time.DateTime)+" "+strings.Join(d.Reasons, ","))
		}
	}
	return out
}

func TestRetentionApplyPolicy(t *testing.T) {
	utc := time.UTC
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, utc)
	tests := []struct {
		name  string
		p     Policy
		times []string
		want  []string
	}{{
		name:  "empty policy keeps all",
		times: []string{"2026-01-01 02:00:00", "2026-01-02 02:00:00"},
		want:  []string{"2026-01-02 02:00:00 policy is empty", "2026-01-01 02:00:00 policy is empty"},
	}, {
		name:  "last",
		p:     Policy{Last: 2},
		times: []string{"2026-01-01 02:00:00", "2026-01-02 02:00:00", "2026-01-03 02:00:00"},
		want:  []string{"2026-01-03 02:00:00 last snapshot", "2026-01-02 02:00:00 last snapshot"},
	}, {
		name:  "daily keeps the newest of each day",
		p:     Policy{Daily: 2},
		times: []string{"2026-01-01 02:00:00", "2026-01-02 02:00:00", "2026-01-02 12:00:00", "2026-01-03 02:00:00", "2026-01-03 23:59:59"},
		want:  []string{"2026-01-03 23:59:59 daily snapshot", "2026-01-02 12:00:00 daily snapshot"},
	}, {
		name:  "hourly",
		p:     Policy{Hourly: 2},
		times: []string{"2026-01-01 01:10:00", "2026-01-01 01:50:00", "2026-01-01 02:05:00", "2026-01-01 02:30:00"},
		want:  []string{"2026-01-01 02:30:00 hourly snapshot", "2026-01-01 01:50:00 hourly snapshot"},
	}, {
		// 2026-01-04 is a Sunday, 2026-01-05 a Monday: ISO weeks start on Monday.
		name:  "weekly is the ISO week",
		p:     Policy{Weekly: 2},
		times: []string{"2025-12-29 02:00:00", "2026-01-04 02:00:00", "2026-01-05 02:00:00", "2026-01-06 02:00:00"},
		want:  []string{"2026-01-06 02:00:00 weekly snapshot", "2026-01-04 02:00:00 weekly snapshot"},
	}, {
		name:  "monthly and yearly",
		p:     Policy{Monthly: 2, Yearly: 3},
		times: []string{"2024-06-01 02:00:00", "2025-11-30 02:00:00", "2025-12-01 02:00:00", "2025-12-31 02:00:00", "2026-01-15 02:00:00"},
		want: []string{"2026-01-15 02:00:00 monthly snapshot,yearly snapshot", "2025-12-31 02:00:00 monthly snapshot,yearly snapshot",
			"2024-06-01 02:00:00 yearly snapshot"},
	}, {
		name:  "unlimited daily",
		p:     Policy{Daily: -1},
		times: []string{"2020-01-01 02:00:00", "2020-01-01 03:00:00", "2026-01-01 02:00:00"},
		want:  []string{"2026-01-01 02:00:00 daily snapshot", "2020-01-01 03:00:00 daily snapshot", "2020-01-01 02:00:00 oldest daily snapshot"},
	}, {
		name:  "oldest kept while a count is left",
		p:     Policy{Daily: 5},
		times: []string{"2026-01-01 01:00:00", "2026-01-01 02:00:00", "2026-01-02 02:00:00"},
		want:  []string{"2026-01-02 02:00:00 daily snapshot", "2026-01-01 02:00:00 daily snapshot", "2026-01-01 01:00:00 oldest daily snapshot"},
	}, {
		name:  "within counts back from the newest, not from now",
		p:     Policy{Within: Duration{Days: 2}},
		times: []string{"2026-01-01 02:00:00", "2026-01-01 02:00:01", "2026-01-02 02:00:00", "2026-01-03 02:00:00"},
		want:  []string{"2026-01-03 02:00:00 within 2d", "2026-01-02 02:00:00 within 2d", "2026-01-01 02:00:01 within 2d"},
	}, {
		name:  "reasons in restic's order",
		p:     Policy{Last: 1, Daily: 1, Within: Duration{Hours: 1}},
		times: []string{"2026-01-01 02:00:00", "2026-01-02 02:00:00"},
		want:  []string{"2026-01-02 02:00:00 within 1h,last snapshot,daily snapshot"},
	}, {
		name:  "a snapshot in the future does not move keep-within",
		p:     Policy{Within: Duration{Days: 1}},
		times: []string{"2029-12-30 05:00:00", "2029-12-31 06:00:00", "2031-01-01 00:00:00"},
		want:  []string{"2031-01-01 00:00:00 within 1d", "2029-12-31 06:00:00 within 1d"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ApplyPolicy(tt.p, dated(t, utc, tt.times...), now)
			if len(got) != len(tt.times) {
				t.Fatalf("%d decisions for %d snapshots", len(got), len(tt.times))
			}
			if k := kept(got); !reflect.DeepEqual(k, tt.want) {
				t.Errorf("kept\n  %s\nwant\n  %s", strings.Join(k, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

// Days, weeks and months are those of the times' location.
func TestRetentionLocalTime(t *testing.T) {
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	if err != nil {
		t.Fatal(err)
	}
	// 01:00 and 23:00 in Tokyo on one day are two UTC days.
	snaps := dated(t, tokyo, "2026-01-05 01:00:00", "2026-01-05 23:00:00")
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if k := kept(ApplyPolicy(Policy{Daily: 1}, snaps, now)); len(k) != 1 {
		t.Errorf("in Tokyo: kept %v, want one", k)
	}
	for i := range snaps {
		snaps[i].BackedUp = snaps[i].BackedUp.UTC()
	}
	if k := kept(ApplyPolicy(Policy{Daily: 2}, snaps, now)); len(k) != 2 || k[1] != "2026-01-04 16:00:00 daily snapshot" {
		t.Errorf("in UTC: kept %v, want two days", k)
	}
}

func TestRetentionDuration(t *testing.T) {
	for in, want := range map[string]Duration{
		"7d": {Days: 7}, "1y2m3d4h": {1, 2, 3, 4}, "12h": {Hours: 12}, "1m1m": {Months: 2},
	} {
		d, err := ParseDuration(in)
		if err != nil || d != want {
			t.Errorf("ParseDuration(%q) = %+v, %v; want %+v", in, d, err, want)
		}
	}
	if s := (Duration{1, 2, 3, 4}).String(); s != "1y2m3d4h" {
		t.Errorf("String = %q", s)
	}
	for _, bad := range []string{"", "7", "d", "7w", "-1d", "1.5d", "99999999999999999999d"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) = nil error", bad)
		}
	}
	if err := (Policy{Daily: -2}).Valid(); err == nil {
		t.Error("keep-daily -2 is valid")
	}
}

// ForgetPolicy forgets, per PE, what the policy does not keep, on the
// repository's clock; the kept snapshots stay whole.
func TestRetentionForgetPolicy(t *testing.T) {
	ctx := context.Background()
	clock := time.Date(2026, 3, 1, 2, 0, 0, 0, time.Local)
	e := newEnv(t, nil, Options{Password: "pw", Now: func() time.Time { return clock }})
	e.disk("a.img", 1*mib, map[int64]int64{0: 4096})
	e.disk("b.img", 1*mib, map[int64]int64{0: 4096})
	for day := 0; day < 5; day++ {
		for _, name := range []string{"disk:a.img", "disk:b.img"} {
			if _, err := e.r.Backup(ctx, e.snap(name), nil); err != nil {
				t.Fatal(err)
			}
		}
		clock = clock.AddDate(0, 0, 1)
	}
	a, _ := pe.ParseID("disk:a.img")
	res, err := e.r.ForgetPolicy(ctx, Policy{Daily: 2}, []pe.ID{a}, true)
	if err != nil || len(res) != 1 || res[0].PE != a || len(kept(res[0].Decisions)) != 2 {
		t.Fatalf("dry run: %+v, %v", res, err)
	}
	if ids, _ := e.r.SnapshotIDs(ctx, pe.ID{}); len(ids) != 10 {
		t.Fatalf("a dry run forgot: %d snapshots left", len(ids))
	}
	res, err = e.r.ForgetPolicy(ctx, Policy{Daily: 2}, nil, false)
	if err != nil || len(res) != 2 {
		t.Fatalf("forget: %+v, %v", res, err)
	}
	snaps, err := e.r.Snapshots(ctx, pe.ID{})
	if err != nil || len(snaps) != 4 {
		t.Fatalf("%d snapshots left, want 4: %v", len(snaps), err)
	}
	for _, s := range snaps {
		if day := s.BackedUp.Local().Day(); day < 4 {
			t.Errorf("kept %s of day %d", s.ID, day)
		}
	}
	if problems, err := e.r.Check(ctx, true, nil); err != nil || len(problems) > 0 {
		t.Fatalf("check: %v, %v", problems, err)
	}
}
