package agent

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

// A member's trend: how its sizes and its Raft index move across the
// agent's Status reads. The growth rates are least-squares slopes over the
// samples of the last --growth-window (dbSize's only since the file last
// shrank: a defrag starts it over); writesPerSecond is the Raft index's
// rate between the two latest reads at least minWritesSpan apart. The
// samples are kept in trend/<member> every window/trendSaves, so that a
// restarted agent knows the rates at once.

const (
	// trendPoints is how many samples one window keeps: kept samples are
	// window/trendPoints apart, and the newest read replaces the newest
	// sample until that one is.
	trendPoints = 60
	// trendSaves is how often per window the samples are written to etcd.
	trendSaves = 6
	// minWritesSpan is the least time between the two reads writesPerSecond
	// is measured between.
	minWritesSpan = time.Second
)

// trend follows one member's reads. It is safe for concurrent use (the
// cycle adds, /status reads).
type trend struct {
	window time.Duration

	mu       sync.Mutex
	samples  []coord.TrendSample // oldest first, within window of the newest
	ref, cur *coord.TrendSample  // the reads writesPerSecond is measured between
	loaded   bool                // trend/<member> was read (or there was none)
	saved    time.Time           // when the samples were last written
}

// trendRates is what the trend says now.
type trendRates struct {
	DBSize, DBSizeInUse float64 // bytes per second; 0 when not measured
	Known               bool    // the growth rates are measured
	WritesPerSecond     float64 // negative when not measured
}

func newTrend(window time.Duration) *trend { return &trend{window: window} }

// spacing is the least time between two kept samples.
func (t *trend) spacing() time.Duration { return t.window / trendPoints }

// add takes one Status read.
func (t *trend) add(s coord.TrendSample) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.addLocked(s)
}

func (t *trend) addLocked(s coord.TrendSample) {
	if n := len(t.samples); n > 0 && !s.Time.After(t.samples[n-1].Time) {
		return // not newer than what is known
	}
	if t.cur != nil && s.Time.Sub(t.cur.Time) >= minWritesSpan {
		t.ref = t.cur
	}
	t.cur = &s

	// The newest sample is replaced until it lies a spacing after the one
	// before it; then it stays, and the next read is appended.
	n := len(t.samples)
	if n >= 2 && t.samples[n-1].Time.Sub(t.samples[n-2].Time) < t.spacing() {
		t.samples[n-1] = s
	} else {
		t.samples = append(t.samples, s)
	}
	cut := s.Time.Add(-t.window)
	i := 0
	for i < len(t.samples)-1 && t.samples[i].Time.Before(cut) {
		i++
	}
	t.samples = slices.Delete(t.samples, 0, i)
}

// rates returns the growth rates and writesPerSecond from the samples.
func (t *trend) rates() trendRates {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := trendRates{WritesPerSecond: -1}
	if t.ref != nil && t.cur != nil && t.cur.RaftIndex >= t.ref.RaftIndex {
		r.WritesPerSecond = float64(t.cur.RaftIndex-t.ref.RaftIndex) / t.cur.Time.Sub(t.ref.Time).Seconds()
	}
	inUse, ok := slope(t.samples, t.spacing(), func(s coord.TrendSample) int64 { return s.DBSizeInUse })
	if !ok {
		return r
	}
	r.Known, r.DBSizeInUse = true, inUse
	// dbSize since the file last shrank.
	since := 0
	for i := 1; i < len(t.samples); i++ {
		if t.samples[i].DBSize < t.samples[i-1].DBSize {
			since = i
		}
	}
	r.DBSize, _ = slope(t.samples[since:], t.spacing(), func(s coord.TrendSample) int64 { return s.DBSize })
	return r
}

// slope is the least-squares slope of y over the samples' times, per
// second; ok is false with fewer than two samples or a span below minSpan.
func slope(samples []coord.TrendSample, minSpan time.Duration, y func(coord.TrendSample) int64) (float64, bool) {
	n := len(samples)
	if n < 2 || samples[n-1].Time.Sub(samples[0].Time) < minSpan {
		return 0, false
	}
	t0, y0 := samples[0].Time, float64(y(samples[0]))
	var sx, sy, sxx, sxy float64
	for _, s := range samples {
		x, v := s.Time.Sub(t0).Seconds(), float64(y(s))-y0
		sx, sy, sxx, sxy = sx+x, sy+v, sxx+x*x, sxy+x*v
	}
	fn := float64(n)
	d := fn*sxx - sx*sx
	if d == 0 {
		return 0, false
	}
	return (fn*sxy - sx*sy) / d, true
}

// merge puts samples read back from trend/<member> before the ones this
// process has, keeping those within the window of now.
func (t *trend) merge(old []coord.TrendSample, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.loaded = true
	mine := t.samples
	t.samples = nil
	for _, s := range old {
		if now.Sub(s.Time) <= t.window && (len(mine) == 0 || s.Time.Before(mine[0].Time)) {
			t.samples = append(t.samples, s)
		}
	}
	for _, s := range mine {
		t.addLocked(s)
	}
}

// dueSave returns the samples to write to trend/<member> when the last
// write is window/trendSaves old (or there was none), and marks them saved.
func (t *trend) dueSave(now time.Time) ([]coord.TrendSample, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.loaded || len(t.samples) < 2 || now.Sub(t.saved) < t.window/trendSaves {
		return nil, false
	}
	t.saved = now
	return slices.Clone(t.samples), true
}

func (t *trend) isLoaded() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loaded
}

// keepTrend reads the member's trend record once, when the agent has none
// yet, and writes the samples back when a save is due (not in a dry run,
// which writes nothing to etcd). Failures are logged
// and tried again at the next cycle: the rates are a rule's input, not a
// reason to stop one.
func (c *cycle) keepTrend(ctx context.Context) {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	if !a.trend.isLoaded() {
		rec, _, err := a.board.Trend(ctx, c.st.ID) // none found: no samples
		if err != nil {
			c.log.Debug("cannot read the member's trend record", "err", err)
			return
		}
		a.trend.merge(rec.Samples, a.now())
	}
	if a.cfg.DryRun {
		return // a dry run writes nothing to etcd
	}
	if samples, due := a.trend.dueSave(a.now()); due {
		if err := a.board.PutTrend(ctx, c.st.ID, coord.Trend{Member: fmt.Sprintf("%x", c.st.ID), Samples: samples}); err != nil {
			c.log.Debug("cannot write the member's trend record", "err", err)
		}
	}
}
