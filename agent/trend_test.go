package agent

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// The fast tier: the trend's arithmetic on made-up reads.

var t0 = time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)

// reads feeds tr n reads every step from start, with dbSize, in use and the
// Raft index given by f of the read's number.
func reads(tr *trend, start time.Time, step time.Duration, n int, f func(i int) (db, inUse int64, idx uint64)) time.Time {
	at := start
	for i := range n {
		at = start.Add(time.Duration(i) * step)
		db, inUse, idx := f(i)
		tr.add(coord.TrendSample{Time: at, DBSize: db, DBSizeInUse: inUse, RaftIndex: idx})
	}
	return at
}

func near(got, want, tolerance float64) bool { return math.Abs(got-want) <= math.Abs(want)*tolerance }

func TestTrendSteadyGrowth(t *testing.T) {
	tr := newTrend(time.Hour)
	// Every 10 s: the file grows 1 MiB, the data in use 512 KiB, 30 entries.
	reads(tr, t0, 10*time.Second, 400, func(i int) (int64, int64, uint64) {
		return int64(100+i) << 20, int64(200+i) << 19, uint64(1000 + 30*i)
	})
	r := tr.rates()
	if !r.Known || !near(r.DBSize, float64(1<<20)/10, 0.001) || !near(r.DBSizeInUse, float64(1<<19)/10, 0.001) {
		t.Errorf("rates %+v, want %v and %v B/s", r, float64(1<<20)/10, float64(1<<19)/10)
	}
	if !near(r.WritesPerSecond, 3, 0.001) {
		t.Errorf("writesPerSecond %v, want 3", r.WritesPerSecond)
	}
	if n := len(tr.samples); n > trendPoints+2 {
		t.Errorf("%d samples kept, want about %d per window", n, trendPoints)
	}
	if span := tr.samples[len(tr.samples)-1].Time.Sub(tr.samples[0].Time); span > time.Hour {
		t.Errorf("samples span %v, more than the window", span)
	}
}

// TestTrendBbolt: the file grows in steps (bbolt allocates 16 MiB at a time)
// while the data in use grows smoothly; over a window in which the file
// grows by several steps, the file's rate is the steps' average.
func TestTrendBbolt(t *testing.T) {
	tr := newTrend(time.Hour)
	reads(tr, t0, 30*time.Second, 240, func(i int) (int64, int64, uint64) {
		inUse := int64(i) << 20                          // 1 MiB per 30 s: 7.5 steps an hour
		return (inUse/(16<<20) + 1) * 16 << 20, inUse, 0 // 16 MiB steps
	})
	r := tr.rates()
	if !near(r.DBSizeInUse, float64(1<<20)/30, 0.01) || !near(r.DBSize, float64(1<<20)/30, 0.15) {
		t.Errorf("rates %+v, want about %v B/s for both", r, float64(1<<20)/30)
	}
}

func TestTrendStartsOverWhenTheFileShrinks(t *testing.T) {
	tr := newTrend(time.Hour)
	end := reads(tr, t0, 10*time.Second, 200, func(i int) (int64, int64, uint64) {
		return int64(1000+i) << 20, 500 << 20, 0
	})
	// A defrag: the file shrinks to the data in use, then grows by 2 MiB
	// a minute.
	reads(tr, end.Add(10*time.Second), 10*time.Second, 60, func(i int) (int64, int64, uint64) {
		return 500<<20 + int64(i)*(2<<20)/6, 500 << 20, 0
	})
	r := tr.rates()
	if !near(r.DBSize, float64(2<<20)/60, 0.01) {
		t.Errorf("dbSize rate %v after the shrink, want %v (the growth since)", r.DBSize, float64(2<<20)/60)
	}
	// Right after the shrink, before a sample spacing has passed, the rate
	// is not measured: 0, so secondsToQuota is +Inf.
	tr = newTrend(time.Hour)
	end = reads(tr, t0, 10*time.Second, 100, func(i int) (int64, int64, uint64) { return int64(1000+i) << 20, 500 << 20, 0 })
	tr.add(coord.TrendSample{Time: end.Add(10 * time.Second), DBSize: 500 << 20, DBSizeInUse: 500 << 20})
	if r := tr.rates(); r.DBSize != 0 {
		t.Errorf("dbSize rate %v right after the shrink, want 0", r.DBSize)
	}
}

func TestTrendFollowsTheWindow(t *testing.T) {
	tr := newTrend(10 * time.Minute)
	end := reads(tr, t0, 10*time.Second, 120, func(i int) (int64, int64, uint64) { return int64(i) << 20, int64(i) << 20, 0 })
	// Then the load stops: after a window the rate is 0.
	reads(tr, end.Add(10*time.Second), 10*time.Second, 61, func(int) (int64, int64, uint64) { return 120 << 20, 120 << 20, 0 })
	if r := tr.rates(); !r.Known || r.DBSize != 0 || r.DBSizeInUse != 0 {
		t.Errorf("rates %+v a window after the load stopped, want 0", r)
	}
}

func TestTrendUnknown(t *testing.T) {
	tr := newTrend(time.Hour)
	if r := tr.rates(); r.Known || r.WritesPerSecond >= 0 {
		t.Errorf("no read: %+v, want nothing known", r)
	}
	tr.add(coord.TrendSample{Time: t0, DBSize: 1 << 20, RaftIndex: 10})
	// Two reads in one cycle, 20 ms apart, measure nothing.
	tr.add(coord.TrendSample{Time: t0.Add(20 * time.Millisecond), DBSize: 1 << 20, RaftIndex: 12})
	if r := tr.rates(); r.Known || r.WritesPerSecond >= 0 {
		t.Errorf("two reads 20 ms apart: %+v, want nothing known", r)
	}
	tr.add(coord.TrendSample{Time: t0.Add(2 * time.Second), DBSize: 1 << 20, RaftIndex: 110})
	// From the read 20 ms in (index 12) to this one (110), 1.98 s apart.
	if r := tr.rates(); r.Known || !near(r.WritesPerSecond, 98/1.98, 0.001) {
		t.Errorf("reads 2 s apart: %+v, want writes known (%v/s), growth not (a minute's span needed)", r, 98/1.98)
	}
	// A read older than the newest is ignored.
	tr.add(coord.TrendSample{Time: t0, DBSize: 5 << 20, RaftIndex: 1})
	if got := tr.samples[len(tr.samples)-1].DBSize; got != 1<<20 {
		t.Errorf("an older read replaced the newest: dbSize %d", got)
	}
}

// TestTrendRestart: a new agent reads its member's record back and knows the
// rates at once; reads of the old agent outside the window are dropped.
func TestTrendRestart(t *testing.T) {
	old := newTrend(time.Hour)
	end := reads(old, t0, 30*time.Second, 200, func(i int) (int64, int64, uint64) { return int64(100+i) << 20, int64(i) << 20, 0 })
	old.merge(nil, end)
	saved, due := old.dueSave(end)
	if !due {
		t.Fatal("no save due on the first cycle")
	}
	if _, due := old.dueSave(end.Add(time.Hour/trendSaves - time.Second)); due {
		t.Error("a second save due before window/trendSaves")
	}
	if _, due := old.dueSave(end.Add(time.Hour / trendSaves)); !due {
		t.Error("no save due after window/trendSaves")
	}

	restarted := newTrend(time.Hour)
	now := end.Add(5 * time.Minute)
	restarted.add(coord.TrendSample{Time: now, DBSize: 305 << 20, DBSizeInUse: 210 << 20})
	restarted.merge(saved, now)
	r := restarted.rates()
	if !r.Known || !near(r.DBSize, float64(1<<20)/30, 0.05) {
		t.Errorf("after a restart: %+v, want %v B/s at once", r, float64(1<<20)/30)
	}
	if first := restarted.samples[0].Time; now.Sub(first) > time.Hour {
		t.Errorf("a sample of %v kept at %v, outside the window", first, now)
	}
}

// The embedded tier: the rates on a real member.

// TestGrowthRates: a member whose data grows at a known rate, read by an
// agent whose clock the test sets (a minute per cycle), gives that rate as
// dbSizeInUseGrowthRate, a dbSizeGrowthRate (bbolt grows the file in 16 MiB
// steps) and a secondsToQuota that agree, and the gauges. A restarted agent
// reads the samples back from trend/<member>: at its first cycle it knows the
// rates, and a forecast rule that needs them fires.
func TestGrowthRates(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	m := followers(t, c)[0]
	cli := c.ClientT(t)
	clock := t0
	withClock := func(s *agentSetup) { s.deps.Now = func() time.Time { return clock } }
	window := withConfig(func(cfg *Config) { cfg.GrowthWindow = 30 * time.Minute })
	a := newTestAgent(t, c, m, "false", withClock, window)

	const perMinute = 4 << 20 // bytes of values per simulated minute
	for i := range 20 {
		if _, err := etcddata.Fill(t.Context(), cli, etcddata.FillOptions{
			Prefix: fmt.Sprintf("/growth/%02d/", i), Keys: perMinute / 1024, ValueSize: 1024, NoCompact: true,
		}); err != nil {
			t.Fatal(err)
		}
		if err := a.RunOnce(t.Context()); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		clock = clock.Add(time.Minute)
	}
	rep := a.LastReport()
	tr := rep.Trend
	if tr == nil || tr.DBSizeInUseGrowth == nil || tr.DBSizeGrowth == nil || tr.SecondsToQuota == nil || tr.WritesPerSecond == nil {
		t.Fatalf("report's trend %+v: not everything measured after 20 cycles", tr)
	}
	// etcd keeps each key with its revision and index, in pages: the bytes
	// in use grow a little faster than the values written.
	want := float64(perMinute) / 60
	if got := *tr.DBSizeInUseGrowth; got < want || got > 1.5*want {
		t.Errorf("dbSizeInUseGrowthRate %v B/s, want %v to %v (values written at %v B/s)", got, want, 1.5*want, want)
	}
	if got := *tr.DBSizeGrowth; got < 0.5*want || got > 2*want {
		t.Errorf("dbSizeGrowthRate %v B/s, want %v to %v (the file grows in steps)", got, 0.5*want, 2*want)
	}
	if stq := rule.SecondsToQuota(rep.Before.DBSize, rep.Before.DBQuota, *tr.DBSizeGrowth); !near(*tr.SecondsToQuota, stq, 1e-9) {
		t.Errorf("secondsToQuota %v, want (quota - dbSize) / rate = %v", *tr.SecondsToQuota, stq)
	}
	for name, g := range map[string]struct {
		gauge  float64
		report float64
	}{
		"db_size_growth_bytes_per_second":        {testutil.ToFloat64(a.metrics.dbSizeGrowth), *tr.DBSizeGrowth},
		"db_size_in_use_growth_bytes_per_second": {testutil.ToFloat64(a.metrics.dbSizeInUseGrowth), *tr.DBSizeInUseGrowth},
		"seconds_to_quota":                       {testutil.ToFloat64(a.metrics.secondsToQuota), *tr.SecondsToQuota},
		"writes_per_second":                      {testutil.ToFloat64(a.metrics.writesPerSecond), *tr.WritesPerSecond},
	} {
		if g.gauge != g.report || g.gauge <= 0 {
			t.Errorf("gauge %s = %v, report %v: want the same positive value", name, g.gauge, g.report)
		}
	}

	// A restart: the new agent's first cycle knows the rates, and the
	// forecast rule fires (at 03:21 by the test's clock).
	if err := a.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Minute)
	const src = "secondsToQuota < 7*24*3600 && dbSizeInUseGrowthRate > 0 && hour == 3"
	b := newTestAgent(t, c, m, src, withClock, window, withConfig(func(cfg *Config) { cfg.DryRun = true }))
	if err := b.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	rep = b.LastReport()
	if rep.Trend == nil || rep.Trend.DBSizeInUseGrowth == nil || rep.Rule == nil || !*rep.Rule {
		t.Errorf("restarted agent's first cycle: trend %+v, rule %v; want the rates read back from %s and %q true",
			rep.Trend, rep.Rule, coord.NewKeys(testPrefix).Trend(m.ID), src)
	}
}
