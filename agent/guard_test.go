package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// putLast writes a member's last-defrag record, as an earlier agent would
// have: copy rates, an end long ago (no cooldown).
func putLast(t testing.TB, c *etcdtest.Cluster, id uint64, rates ...float64) {
	t.Helper()
	b, err := json.Marshal(coord.Last{
		Result: resultSuccess, End: time.Now().Add(-24 * time.Hour), LastSuccess: time.Now().Add(-24 * time.Hour),
		CopyRates: rates,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClientT(t).Put(t.Context(), coord.NewKeys(testPrefix).Last(id), string(b)); err != nil {
		t.Fatal(err)
	}
}

// inUse returns a member's dbSizeInUse.
func inUse(t testing.TB, c *etcdtest.Cluster, m *etcdtest.Member) int64 {
	t.Helper()
	st, err := c.ClientT(t).Status(t.Context(), m.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	return st.DbSizeInUse
}

// defragsOf counts the defrags etcd logged of member id.
func defragsOf(c *etcdtest.Cluster, id uint64) int {
	n := 0
	for _, d := range c.Defrags() {
		if d.MemberID == id {
			n++
		}
	}
	return n
}

// TestProbeBudget: a defrag forecast to outlast --max-defrag-duration is
// refused with probe_budget, before anything is written to etcd, and the
// message says what the forecast is based on: the member's own recorded
// defrags, the other members', or the default rate. A forecast within the
// budget goes ahead.
func TestProbeBudget(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 1024, Garbage: 0.5})
	fs := followers(t, c)
	m, other := fs[0], fs[1]
	used := float64(inUse(t, c, m))
	budget := withConfig(func(cfg *Config) { cfg.MaxDefragDuration = 10 * time.Second })

	tests := []struct {
		name    string
		setup   func()
		budget  time.Duration
		want    string // in the error
		wantSrc rateSource
		// forecast is the expected forecast in seconds (0: any above the
		// budget), met within 10 %: the member's in-use bytes grow a
		// little with the agents' own records between the test's read and
		// the agent's.
		forecast float64
	}{
		{
			name:   "default rate",
			setup:  func() {},
			budget: time.Millisecond, // under any forecast of this member at 50 MiB/s
			want:   "the default of 50.0 MiB/s: no member has a recorded defrag yet", wantSrc: rateDefault,
		},
		{
			name:   "the other members' rates",
			setup:  func() { putLast(t, c, other.ID, used/100) }, // 100 s
			budget: 10 * time.Second,
			want:   "(copy rate from the other members' recorded defrags)", wantSrc: rateCluster, forecast: 100,
		},
		{
			name:   "this member's rates",
			setup:  func() { putLast(t, c, m.ID, used/40, used/20, used/30) }, // the median: 30 s
			budget: 10 * time.Second,
			want:   "(copy rate from this member's recorded defrags)", wantSrc: rateOwn, forecast: 30,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			a := newTestAgent(t, c, m, "true", budget, withConfig(func(cfg *Config) { cfg.MaxDefragDuration = tc.budget }))
			err := a.RunOnce(t.Context())
			if got := blockedReason(t, err); got != ReasonProbeBudget {
				t.Fatalf("reason = %q, want %q (err %v)", got, ReasonProbeBudget, err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--max-defrag-duration "+tc.budget.String()) {
				t.Errorf("error %q does not say %q and name the budget %v", err, tc.want, tc.budget)
			}
			rep := a.LastReport()
			if rep.CopyRateSource != string(tc.wantSrc) || rep.ExpectedDefragSeconds <= tc.budget.Seconds() {
				t.Errorf("report: forecast %vs from %q, want more than %v from %q", rep.ExpectedDefragSeconds, rep.CopyRateSource, tc.budget, tc.wantSrc)
			}
			if tc.forecast > 0 && math.Abs(rep.ExpectedDefragSeconds-tc.forecast) > tc.forecast/10 {
				t.Errorf("report: forecast %vs, want %vs within 10 %%", rep.ExpectedDefragSeconds, tc.forecast)
			}
			if !strings.Contains(err.Error(), "forecast to take ") {
				t.Errorf("error %q does not give the forecast", err)
			}
			if got := testutil.ToFloat64(a.metrics.expectedDefrag); got != rep.ExpectedDefragSeconds {
				t.Errorf("expected_defrag_seconds = %v, want the report's %v", got, rep.ExpectedDefragSeconds)
			}
			if n := defragsOf(c, m.ID); n != 0 {
				t.Errorf("member %s defragmented %d times despite the guard", m.Name, n)
			}
		})
	}

	t.Run("within the budget", func(t *testing.T) {
		putLast(t, c, m.ID, used/2) // 2 s
		a := newTestAgent(t, c, m, "true", budget)
		if err := a.RunOnce(t.Context()); err != nil {
			t.Fatalf("a defrag forecast to take 2 s against a budget of 10 s: %v", err)
		}
		if n := defragsOf(c, m.ID); n != 1 {
			t.Errorf("member %s defragmented %d times, want 1", m.Name, n)
		}
	})
}

// TestDiskSpace: with --data-dir, a defrag whose copy does not fit in the
// filesystem's free space (in use × (1 + --disk-headroom)) is refused with
// disk_space, naming both numbers; once there is room it goes. diskFree is
// a rule variable and a gauge. (The filesystem's free space comes from a
// fake here; the end-to-end suite fills a real small filesystem.)
func TestDiskSpace(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 1024, Garbage: 0.5})
	m := followers(t, c)[0]
	used := inUse(t, c, m)
	var free int64
	disk := func(a *agentSetup) {
		a.cfg.DataDir, a.cfg.DiskHeadroom = t.TempDir(), 0.2
		a.deps.DiskFree = func(string) (int64, error) { return free, nil }
	}

	free = used // short of the headroom
	a := newTestAgent(t, c, m, "diskFree >= 0", disk)
	err := a.RunOnce(t.Context())
	if got := blockedReason(t, err); got != ReasonDiskSpace {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonDiskSpace, err)
	}
	for _, want := range []string{bytesIEC(free) + " free on the filesystem of --data-dir", "a defrag needs " + bytesIEC(int64(float64(used)*1.2))} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if got := testutil.ToFloat64(a.metrics.diskFree); got != float64(free) {
		t.Errorf("disk_free_bytes = %v, want %d", got, free)
	}
	if rep := a.LastReport(); rep.DiskFreeBytes == nil || *rep.DiskFreeBytes != free {
		t.Errorf("report disk_free_bytes = %v, want %d", rep.DiskFreeBytes, free)
	}
	if n := defragsOf(c, m.ID); n != 0 {
		t.Fatalf("member %s defragmented %d times despite the guard", m.Name, n)
	}

	free = 2 * used
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatalf("with room for the copy: %v", err)
	}
	if n := defragsOf(c, m.ID); n != 1 {
		t.Errorf("member %s defragmented %d times, want 1", m.Name, n)
	}
}

// TestDefragRecordsCopyRate: a defrag of a member with enough data in use
// records the rate at which it copied it, and the HashKV check's outcome,
// in last/; the next forecast is based on it.
func TestDefragRecordsCopyRate(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 4000, ValueSize: 4096, Garbage: 0.25})
	m := followers(t, c)[0]
	used := inUse(t, c, m)
	if used < minRateBytes {
		t.Fatalf("%d bytes in use, want at least %d for a measured rate", used, minRateBytes)
	}
	a := newTestAgent(t, c, m, "true")
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec, found, err := coord.Get[coord.Last](t.Context(), c.ClientT(t), coord.NewKeys(testPrefix).Last(m.ID))
	if err != nil || !found {
		t.Fatalf("last record: found %v, err %v", found, err)
	}
	took := rec.Value.End.Sub(rec.Value.Start)
	copied := rec.Value.Before.DBSizeInUse
	// The record's times are wall clock (JSON drops the monotonic reading
	// the agent measured with): a relative tolerance.
	if want := float64(copied) / took.Seconds(); len(rec.Value.CopyRates) != 1 || math.Abs(rec.Value.CopyRates[0]-want) > want/1000 {
		t.Errorf("copy rates %v, want one: %d bytes in use over the %v the defrag took", rec.Value.CopyRates, copied, took)
	}
	if rec.Value.Verify != coord.VerifyOK {
		t.Errorf("verify = %q, want %q", rec.Value.Verify, coord.VerifyOK)
	}

	// The next cycle forecasts from it.
	if err := a.RunOnce(t.Context()); err != nil && !errors.As(err, new(*BlockedError)) {
		t.Fatal(err)
	}
	if rep := a.LastReport(); rep.CopyRateSource != string(rateOwn) {
		t.Errorf("the next forecast is based on %q, want %q", rep.CopyRateSource, rateOwn)
	}
}

// TestNoSpaceOverridesGuards: under NOSPACE the recovery defragments
// although both guards would refuse (a budget of 1 ms, no free disk), and
// says so loudly: an error in its log for every member, naming the guard,
// and guard_overrides_total.
func TestNoSpaceOverridesGuards(t *testing.T) {
	c := newCluster(t, etcdtest.Options{QuotaBackendBytes: smallQuota})
	cli := c.ClientT(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var (
		agents []*testAgent
		logs   syncBuffer
	)
	served := make(chan error, len(c.Members()))
	for _, m := range c.Members() {
		a := newTestAgent(t, c, m, "false", func(s *agentSetup) {
			s.cfg.MaxDefragDuration = time.Millisecond
			s.cfg.DataDir, s.cfg.DiskHeadroom = t.TempDir(), 0.2
			s.deps.DiskFree = func(string) (int64, error) { return 0, nil }
			s.deps.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		})
		agents = append(agents, a)
		go func() { served <- a.Serve(ctx, Schedule{Every: 200 * time.Millisecond}) }()
	}
	waitFor(t, 30*time.Second, "every agent in the NOSPACE queue", func() bool { return queued(t, cli) == int64(len(agents)) })
	fillUntilNoSpace(t, cli, 4)
	waitFor(t, 60*time.Second, "NOSPACE disarmed", func() bool { return !noSpaceRaised(t, cli) })
	cancel()
	for range agents {
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	ds := c.Defrags()
	checkOneAtATime(t, ds)
	var probe, disk float64
	for _, a := range agents {
		probe += testutil.ToFloat64(a.metrics.guardOverrides.WithLabelValues(guardProbeBudget))
		disk += testutil.ToFloat64(a.metrics.guardOverrides.WithLabelValues(guardDiskSpace))
	}
	if int(probe) != len(ds) || len(ds) == 0 {
		t.Errorf("guard_overrides_total{guard=probe_budget} = %v over the agents, want one per NOSPACE defrag (%d)", probe, len(ds))
	}
	if disk < 1 || disk > probe {
		t.Errorf("guard_overrides_total{guard=disk_space} = %v, want at least 1 and at most one per defrag: the disk is known for the recovering agent's own member only", disk)
	}
	errorsLogged := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"level":"ERROR"`) && strings.Contains(line, "NOSPACE: defragmenting although a guard would refuse") &&
			strings.Contains(line, `"guard":"probe_budget"`) {
			errorsLogged++
		}
	}
	if errorsLogged != int(probe) {
		t.Errorf("%d errors logged about the probe guard, want one per override (%v):\n%s", errorsLogged, probe, logs.String())
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
