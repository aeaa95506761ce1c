package etcdtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// The log messages that delimit a defragmentation, as etcd v3.6 writes them.
const (
	// msgDefragStart is logged by the backend (storage/backend/backend.go)
	// once it holds the batch-tx, database and read-tx locks: from here on
	// the member serves no reads or writes.
	msgDefragStart = "defragmenting"
	// msgDefragEnd is logged by the backend just before it releases those
	// locks.
	msgDefragEnd = "finished defragmenting directory"
	// msgDefragFailed is logged by the maintenance server
	// (etcdserver/api/v3rpc/maintenance.go) when Defragment returns an
	// error; the backend has released its locks by then.
	msgDefragFailed = "failed to defragment"
)

// Defrag is one defragmentation of one member, as the member itself logged
// it: from the moment its backend held the locks that block reads and writes
// until just before it released them.
type Defrag struct {
	Member   string    // member name
	MemberID uint64    // member ID
	Start    time.Time // timestamp of the "defragmenting" log entry
	End      time.Time // timestamp of the "finished defragmenting directory" (or "failed to defragment") entry; zero while running
	Err      string    // the error of a failed defragmentation; empty on success and while running
}

// Running reports whether the defragmentation had not finished when d was
// taken.
func (d Defrag) Running() bool { return d.End.IsZero() }

// Duration returns End-Start, or 0 while the defragmentation runs.
func (d Defrag) Duration() time.Duration {
	if d.Running() {
		return 0
	}
	return d.End.Sub(d.Start)
}

// String formats d for test failure messages.
func (d Defrag) String() string {
	end := "running"
	if !d.Running() {
		end = d.End.Format("15:04:05.000000")
	}
	s := fmt.Sprintf("%s(%x) %s..%s", d.Member, d.MemberID, d.Start.Format("15:04:05.000000"), end)
	if d.Err != "" {
		s += " err=" + d.Err
	}
	return s
}

// Overlaps returns every pair of defragmentations in ds whose intervals
// overlap in time, each pair ordered by Start. A running defragmentation
// (zero End) is treated as open-ended. Intervals that only touch do not
// overlap. An empty result means invariant I1 held for ds.
func Overlaps(ds []Defrag) [][2]Defrag {
	sorted := slices.Clone(ds)
	slices.SortStableFunc(sorted, func(a, b Defrag) int { return a.Start.Compare(b.Start) })
	var out [][2]Defrag
	for i, a := range sorted {
		for _, b := range sorted[i+1:] {
			// b.Start >= a.Start; they overlap if b starts before a ends.
			if a.Running() || b.Start.Before(a.End) {
				out = append(out, [2]Defrag{a, b})
			}
		}
	}
	return out
}

// recorder collects the defragmentations of every member of one cluster
// from the members' log entries.
type recorder struct {
	mu      sync.Mutex
	defrags []Defrag
	open    map[string]int    // member name -> index of its running defrag
	ids     map[string]uint64 // member name -> member ID
	changed chan struct{}     // closed and replaced on every change
}

func newRecorder() *recorder {
	return &recorder{
		open:    make(map[string]int),
		ids:     make(map[string]uint64),
		changed: make(chan struct{}),
	}
}

// setID records the ID of a member once it is known.
func (r *recorder) setID(member string, id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids[member] = id
	for i := range r.defrags {
		if r.defrags[i].Member == member && r.defrags[i].MemberID == 0 {
			r.defrags[i].MemberID = id
		}
	}
}

func (r *recorder) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// observe records one of the defrag log entries of member.
func (r *recorder) observe(member string, ent zapcore.Entry, fields []zapcore.Field) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch ent.Message {
	case msgDefragStart:
		if i, ok := r.open[member]; ok {
			// A start without an end: the previous one ended without a
			// log line we know. Close it at the new start.
			r.defrags[i].End = ent.Time
			r.defrags[i].Err = "no end logged"
		}
		r.open[member] = len(r.defrags)
		r.defrags = append(r.defrags, Defrag{Member: member, MemberID: r.ids[member], Start: ent.Time})
	case msgDefragEnd, msgDefragFailed:
		i, ok := r.open[member]
		if !ok {
			// A failure before the backend took its locks (or a second
			// line for an interval already closed): nothing was blocked.
			return
		}
		delete(r.open, member)
		r.defrags[i].End = ent.Time
		if ent.Message == msgDefragFailed {
			r.defrags[i].Err = errorField(fields)
		}
	default:
		return
	}
	r.notifyLocked()
}

// snapshot returns a copy of every defrag and the channel that is closed on
// the next change.
func (r *recorder) snapshot() ([]Defrag, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.defrags), r.changed
}

// errorField returns the "error" field of a log entry as a string.
func errorField(fields []zapcore.Field) string {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		if f.Key == "error" {
			f.AddTo(enc)
		}
	}
	if v, ok := enc.Fields["error"]; ok {
		return fmt.Sprint(v)
	}
	return "unknown error"
}

// Defrags returns every defragmentation the cluster's members have logged
// so far, in the order they started, including running ones (zero End).
func (c *Cluster) Defrags() []Defrag {
	ds, _ := c.rec.snapshot()
	return ds
}

// WaitDefrags waits until at least n defragmentations have finished (with
// or without error) and returns all defragmentations recorded by then. ctx
// bounds the wait; when it ends first, WaitDefrags returns what was recorded
// and an error.
func (c *Cluster) WaitDefrags(ctx context.Context, n int) ([]Defrag, error) {
	for {
		ds, changed := c.rec.snapshot()
		finished := 0
		for _, d := range ds {
			if !d.Running() {
				finished++
			}
		}
		if finished >= n {
			return ds, nil
		}
		select {
		case <-ctx.Done():
			return ds, fmt.Errorf("wait for %d finished defrags (have %d): %w", n, finished, context.Cause(ctx))
		case <-changed:
		}
	}
}

// captureCore is the zap core of one member's logger. It keeps only the
// defragmentation entries and hands them to the cluster's recorder;
// everything else is dropped (a tee adds Options.Logger).
type captureCore struct {
	rec    *recorder
	member string
}

var _ zapcore.Core = (*captureCore)(nil)

func (c *captureCore) Enabled(l zapcore.Level) bool { return l >= zapcore.InfoLevel }

func (c *captureCore) With([]zapcore.Field) zapcore.Core { return c }

func (c *captureCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	switch ent.Message {
	case msgDefragStart, msgDefragEnd, msgDefragFailed:
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *captureCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	c.rec.observe(c.member, ent, fields)
	return nil
}

func (c *captureCore) Sync() error { return nil }
