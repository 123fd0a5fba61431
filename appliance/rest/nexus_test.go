package rest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// jsClient waits on a task nexus as a JavaScript client does: JSON
// numbers are doubles, and a number goes into the URL as JavaScript
// prints it (the shortest digits that read back as the same double).
type jsClient struct {
	name string
	// next is the lastFinishedNS of the next wait, after the tasks taken
	// from an answer.
	next func(answer map[string]any, taken []map[string]any) string
	// oneAtATime takes only the first task of an answer, so that the
	// next wait's cursor falls between tasks that finished together.
	oneAtATime bool
}

// jsNumber is JavaScript's String(v) for an integral v below 1e21.
func jsNumber(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// lastNS is the finishedTimeNS, as a double, of the last task taken.
func lastNS(taken []map[string]any) float64 { return taken[len(taken)-1]["finishedTimeNS"].(float64) }

var jsClients = []jsClient{
	{name: "finishedTimeNS as a double", oneAtATime: true,
		next: func(_ map[string]any, taken []map[string]any) string { return jsNumber(lastNS(taken)) }},
	{name: "finishedTimeNS rounded up by 2^-52", oneAtATime: true,
		next: func(_ map[string]any, taken []map[string]any) string {
			return jsNumber(lastNS(taken) * (1 + math.Ldexp(1, -52)))
		}},
	{name: "finishedTimeNS rounded down by 2^-52", oneAtATime: true,
		next: func(_ map[string]any, taken []map[string]any) string {
			return jsNumber(lastNS(taken) * (1 - math.Ldexp(1, -52)))
		}},
	{name: "cursor", oneAtATime: false,
		next: func(answer map[string]any, _ []map[string]any) string { return answer["cursor"].(string) }},
}

// TestNexusLongPollJavaScript runs rounds of tasks that finish in the same
// microsecond (a clock that moves 7 ns a call), the first of each failing
// as soon as it starts, while clients that hold
// numbers as doubles long-poll the nexus over HTTP, each with its way of
// sending back the cursor: every client sees every task exactly once, in
// the order they finished.
func TestNexusLongPollJavaScript(t *testing.T) {
	// 1796458123456789123 ns: an instant a double cannot hold.
	base := time.Unix(0, 1796458123456789123)
	var ticks atomic.Int64
	clock := func() time.Time { return base.Add(time.Duration(ticks.Add(1)) * 7 * time.Nanosecond) }
	f := newFixtureWith(t, tasks.Options{Now: clock})
	const rounds, perRound = 4, 6

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	status, body, err := f.request(ctx, http.MethodPost, "/v1/astrolabe/tasks/nexus")
	var nexus string
	if err != nil || status != http.StatusOK || json.Unmarshal(body, &nexus) != nil {
		t.Fatalf("create nexus: %d %s %v", status, body, err)
	}
	seen := make([][]string, len(jsClients))
	errs := make([]error, len(jsClients))
	var wg sync.WaitGroup
	for i, c := range jsClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seen[i], errs[i] = f.pollAll(ctx, nexus, c, rounds*perRound)
		}()
	}

	var want []string
	for r := range rounds {
		release := make(chan struct{})
		var ids []string
		for k := range perRound {
			info, err := f.tasks.Start(ctx, "test", fmt.Sprintf("round %d task %d", r, k), nexus,
				func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
					if k == 0 {
						return nil, errors.New("fails as it starts")
					}
					<-release
					return nil, nil
				})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, info.ID)
		}
		before := ticks.Load()
		close(release)
		var round []tasks.Info
		for _, id := range ids {
			info, err := f.tasks.Wait(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			round = append(round, info)
		}
		if spent := time.Duration(ticks.Load()-before) * 7; spent >= time.Microsecond {
			t.Fatalf("round %d took %v of the clock, want its tasks to finish within a microsecond", r, spent)
		}
		slices.SortFunc(round, func(a, b tasks.Info) int { return a.Finished.Compare(b.Finished) })
		for _, info := range round {
			want = append(want, info.ID)
		}
	}
	wg.Wait()
	for i, c := range jsClients {
		if errs[i] != nil {
			t.Errorf("client %q: %v", c.name, errs[i])
		}
		if !slices.Equal(seen[i], want) {
			t.Errorf("client %q saw %d tasks %v\nwant %d in finish order %v", c.name, len(seen[i]), seen[i], len(want), want)
		}
	}
}

// pollAll long-polls the nexus as client c until it has seen n tasks, at
// most 4n+10 times, and returns the task IDs in the order it saw them. A
// task seen twice is an error.
func (f *fixture) pollAll(ctx context.Context, nexus string, c jsClient, n int) ([]string, error) {
	var seen []string
	cursor := "0"
	for polls := 0; len(seen) < n; polls++ {
		if polls >= 4*n+10 {
			return seen, fmt.Errorf("%d tasks seen after %d waits", len(seen), polls)
		}
		status, body, err := f.request(ctx, http.MethodGet, "/v1/astrolabe/tasks/nexus/"+nexus+"?waitTime=2000&lastFinishedNS="+cursor)
		if err != nil || status != http.StatusOK {
			return seen, fmt.Errorf("wait with lastFinishedNS=%s: %d %s %v", cursor, status, body, err)
		}
		var answer map[string]any // numbers as float64, as in JavaScript
		if err := json.Unmarshal(body, &answer); err != nil {
			return seen, fmt.Errorf("answer %s: %w", body, err)
		}
		var taken []map[string]any
		for _, v := range answer["finished"].([]any) {
			taken = append(taken, v.(map[string]any))
			if c.oneAtATime {
				break
			}
		}
		if len(taken) == 0 {
			continue // waited waitTime with nothing finished
		}
		for _, task := range taken {
			id := task["id"].(string)
			if slices.Contains(seen, id) {
				return seen, fmt.Errorf("task %s returned again for lastFinishedNS=%s", id, cursor)
			}
			if err := exactTimes(task); err != nil {
				return seen, fmt.Errorf("task %s: %w", id, err)
			}
			seen = append(seen, id)
		}
		cursor = c.next(answer, taken)
	}
	return seen, nil
}

// exactTimes checks that a task's startedTime and finishedTime strings
// are RFC 3339 in UTC, that it did not finish before it started, and that
// its finishedTimeNS, read as a double, is the finish time to the
// nanosecond.
func exactTimes(task map[string]any) error {
	st, err := utcTime(task, "startedTime")
	if err != nil {
		return err
	}
	ft, err := utcTime(task, "finishedTime")
	if err != nil {
		return err
	}
	if ft.Before(st) {
		return fmt.Errorf("finishedTime %s before startedTime %s", ft.Format(time.RFC3339Nano), st.Format(time.RFC3339Nano))
	}
	if ns := task["finishedTimeNS"].(float64); int64(ns) != ft.UnixNano() {
		return fmt.Errorf("finishedTimeNS %s read as a double is %d, finishedTime %s is %d", jsNumber(ns), int64(ns), ft.Format(time.RFC3339Nano), ft.UnixNano())
	}
	return nil
}

// utcTime reads a task's time field, which must be RFC 3339 in UTC.
func utcTime(task map[string]any, field string) (time.Time, error) {
	s, _ := task[field].(string)
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Location() != time.UTC {
		return time.Time{}, fmt.Errorf("%s %q: want RFC 3339 in UTC (%v)", field, s, err)
	}
	return t, nil
}

// request is an authenticated request without body, as a client outside
// Go makes it.
func (f *fixture) request(ctx context.Context, method, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, f.url+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := f.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
