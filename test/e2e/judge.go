//go:build linux

package e2e

// The observer's judgement: I1 (overlaps by the log intervals and by the
// gauges), I3 (a leader's own turn while a follower was pending), the
// sampler's sanity, and the report at cleanup.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdlog"
)

// Overlaps returns every I1 violation seen so far: pairs of members whose
// logged defrag intervals overlap (a running one is open-ended), and pairs
// whose inflight gauges were both 1 at one moment. Intervals that only
// touch do not overlap; a sample proves a moment only between two samples
// of the same run (the gauge cannot be read at an exact instant).
func (o *Observer) Overlaps() []string {
	o.mu.Lock()
	ds := slices.Clone(o.defrags)
	samples := make(map[string][]Sample, len(o.samples))
	for k, v := range o.samples {
		samples[k] = slices.Clone(v)
	}
	o.mu.Unlock()
	var out []string
	for _, p := range logOverlaps(ds) {
		out = append(out, fmt.Sprintf("defrag log intervals overlap: %v and %v", p[0], p[1]))
	}
	out = append(out, gaugeOverlaps(samples)...)
	return out
}

// logOverlaps returns the pairs of intervals of different members that
// overlap, each pair ordered by start.
func logOverlaps(ds []Defrag) [][2]Defrag {
	return slices.DeleteFunc(etcdlog.Overlaps(ds), func(p [2]Defrag) bool { return p[0].Member == p[1].Member })
}

// window is a span of time during which a member's gauge was certainly 1.
type window struct{ from, to time.Time }

// inflightRuns returns, for a member's samples, the certain windows of its
// runs of consecutive successful inflight samples (from the end of the
// first to the start of the last sample of a run of at least two), and
// every inflight sample's own span.
func inflightRuns(ss []Sample) (certain []window, spans []window) {
	runStart := -1
	flush := func(end int) {
		if runStart >= 0 && end-1 > runStart {
			certain = append(certain, window{ss[runStart].End, ss[end-1].Start})
		}
		runStart = -1
	}
	for i, s := range ss {
		if s.OK && s.Inflight {
			spans = append(spans, window{s.Start, s.End})
			if runStart < 0 {
				runStart = i
			}
			continue
		}
		flush(i)
	}
	flush(len(ss))
	return certain, spans
}

// gaugeOverlaps returns, for each pair of members, the first moment both
// their inflight gauges were certainly 1: two certain windows intersect, or
// a sample of one lies entirely inside a certain window of the other.
func gaugeOverlaps(samples map[string][]Sample) []string {
	names := make([]string, 0, len(samples))
	for n := range samples {
		names = append(names, n)
	}
	slices.Sort(names)
	certain := make(map[string][]window)
	spans := make(map[string][]window)
	for _, n := range names {
		certain[n], spans[n] = inflightRuns(samples[n])
	}
	var out []string
	for i, a := range names {
		for _, b := range names[i+1:] {
			if v := pairOverlap(a, b, certain, spans); v != "" {
				out = append(out, v)
			}
		}
	}
	return out
}

// pairOverlap returns the first proof that members a and b were both
// inflight, or "".
func pairOverlap(a, b string, certain, spans map[string][]window) string {
	for _, wa := range certain[a] {
		for _, wb := range certain[b] {
			if wa.from.Before(wb.to) && wb.from.Before(wa.to) {
				return fmt.Sprintf("inflight gauges both 1: %s during %s..%s and %s during %s..%s",
					a, clock(wa.from), clock(wa.to), b, clock(wb.from), clock(wb.to))
			}
		}
	}
	for _, p := range [][2]string{{a, b}, {b, a}} {
		for _, w := range certain[p[0]] {
			for _, s := range spans[p[1]] {
				if !s.from.Before(w.from) && !w.to.Before(s.to) {
					return fmt.Sprintf("inflight gauges both 1: %s during %s..%s and %s sampled 1 at %s..%s",
						p[0], clock(w.from), clock(w.to), p[1], clock(s.from), clock(s.to))
				}
			}
		}
	}
	return ""
}

func clock(t time.Time) string { return t.Format("15:04:05.000000") }

// LeaderFirst returns every I3 violation seen so far: a member that led when
// its defrag started, whose own agent had announced "locked" (the turn that
// led to that defrag: its announcement right before the defrag says
// "defragmenting") at a revision where another member's agent was in a turn
// or pending. The leader's agent re-reads the announcements after it takes
// the lock and must then let that follower go first.
func (o *Observer) LeaderFirst() []string {
	o.mu.Lock()
	ds := slices.Clone(o.defrags)
	anns := slices.Clone(o.anns)
	o.mu.Unlock()
	var out []string
	for _, d := range ds {
		leader, known := o.LeaderAt(d.Member, d.Start)
		if !known || !leader {
			continue
		}
		// The leader's agent's last announcement sent before the defrag
		// began must be "defragmenting", and its "locked" before that.
		var last, locked *Announcement
		for i := range anns {
			a := &anns[i]
			if a.Member != d.MemberID || a.Deleted || !a.Time.Before(d.Start) {
				continue
			}
			if last == nil || a.Revision > last.Revision {
				last = a
			}
		}
		if last == nil || last.State != "defragmenting" {
			continue // not a turn of the member's own agent (NOSPACE recovery, a human)
		}
		for i := range anns {
			a := &anns[i]
			if a.Lease == last.Lease && a.State == "locked" && a.Revision < last.Revision && (locked == nil || a.Revision > locked.Revision) {
				locked = a
			}
		}
		if locked == nil {
			continue
		}
		for _, f := range activeAt(anns, locked.Revision) {
			if f.Member != d.MemberID {
				out = append(out, fmt.Sprintf("leader %s defragmented (%v) after its agent took the lock at revision %d while the agent of member %x was %s (since revision %d)",
					d.Member, d, locked.Revision, f.Member, f.State, f.Revision))
			}
		}
	}
	return out
}

// activeAt returns, for each session lease, its latest announcement before
// revision rev if that one is active.
func activeAt(anns []Announcement, rev int64) []Announcement {
	latest := map[int64]Announcement{}
	for _, a := range anns {
		if a.Revision < rev {
			if prev, ok := latest[a.Lease]; !ok || a.Revision > prev.Revision {
				latest[a.Lease] = a
			}
		}
	}
	var out []Announcement
	for _, a := range latest {
		if a.active() {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b Announcement) int { return int(a.Revision - b.Revision) })
	return out
}

// gaugeMisses returns logged defrags of at least gaugeCheckThreshold during which
// the member was sampled successfully but never with inflight 1: the
// sampler or the metric is broken, and the gauge checks prove nothing.
func (o *Observer) gaugeMisses() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, d := range o.defrags {
		if d.Running() || d.Err != "" || d.Duration() < gaugeCheckThreshold {
			continue
		}
		sampled, seen := 0, false
		for _, s := range o.samples[d.Member] {
			if s.OK && !s.Start.Before(d.Start) && !s.End.After(d.End) {
				sampled++
				seen = seen || s.Inflight
			}
		}
		if sampled > 0 && !seen {
			out = append(out, fmt.Sprintf("%d samples of %s inside its logged defrag %v never showed etcd_disk_defrag_inflight 1", sampled, d.Member, d))
		}
	}
	return out
}

// check fails the test on I1 and I3 violations and on a broken sampler.
func (o *Observer) check(t testing.TB) {
	t.Helper()
	o.mu.Lock()
	started := o.started
	o.mu.Unlock()
	if !started {
		return
	}
	for _, v := range o.Overlaps() {
		t.Errorf("I1 violated: %s", v)
	}
	for _, v := range o.LeaderFirst() {
		t.Errorf("I3 violated: %s", v)
	}
	for _, v := range o.gaugeMisses() {
		t.Errorf("observer: %s", v)
	}
}

// SamplingStats describes how regularly a member was sampled.
type SamplingStats struct {
	Samples, Failed int
	// MaxGap is the longest time between the starts of two consecutive
	// successful samples; P99Gap the 99th percentile.
	MaxGap, P99Gap time.Duration
	// P50Scrape and P99Scrape are percentiles of the duration of one
	// successful scrape.
	P50Scrape, P99Scrape time.Duration
}

// Sampling returns the sampling statistics of a member.
func (o *Observer) Sampling(member string) SamplingStats {
	ss := o.Samples(member)
	st := SamplingStats{Samples: len(ss)}
	var gaps, scrapes []time.Duration
	var prev time.Time
	for _, s := range ss {
		if !s.OK {
			st.Failed++
			prev = time.Time{}
			continue
		}
		scrapes = append(scrapes, s.End.Sub(s.Start))
		if !prev.IsZero() {
			gaps = append(gaps, s.Start.Sub(prev))
		}
		prev = s.Start
	}
	if len(gaps) > 0 {
		slices.Sort(gaps)
		st.MaxGap = gaps[len(gaps)-1]
		st.P99Gap = gaps[len(gaps)*99/100]
	}
	if len(scrapes) > 0 {
		slices.Sort(scrapes)
		st.P50Scrape, st.P99Scrape = scrapes[len(scrapes)/2], scrapes[len(scrapes)*99/100]
	}
	return st
}

// report logs the defrags and the sampling statistics.
func (o *Observer) report(t testing.TB) {
	t.Helper()
	o.mu.Lock()
	started := o.started
	errs := slices.Clone(o.watchErrs)
	o.mu.Unlock()
	if !started {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "observer (etcd %s): defrags by the members' logs:", o.c.Etcd.Version)
	for _, d := range o.Defrags() {
		fmt.Fprintf(&b, "\n  %v", d)
	}
	b.WriteString("\n  sampling:")
	for _, m := range o.c.members {
		s := o.Sampling(m.Name)
		fmt.Fprintf(&b, " %s %d samples (%d failed), gap p99 %v max %v, scrape p50 %v p99 %v;", m.Name, s.Samples, s.Failed,
			s.P99Gap.Round(time.Millisecond), s.MaxGap.Round(time.Millisecond),
			s.P50Scrape.Round(100*time.Microsecond), s.P99Scrape.Round(100*time.Microsecond))
	}
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  %s", e)
	}
	t.Log(b.String())
}
