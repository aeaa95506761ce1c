package etcdtest

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"go.uber.org/zap/zapcore"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdlog"
)

// The log messages that delimit a defragmentation.
const (
	msgDefragStart  = etcdlog.MsgStart
	msgDefragEnd    = etcdlog.MsgEnd
	msgDefragFailed = etcdlog.MsgFailed
)

// Defrag is one defragmentation of one member, as the member itself logged
// it (see package internal/etcdlog).
type Defrag = etcdlog.Defrag

// Overlaps returns every pair of defragmentations in ds whose intervals
// overlap in time (see etcdlog.Overlaps). An empty result means invariant
// I1 held for ds.
func Overlaps(ds []Defrag) [][2]Defrag { return etcdlog.Overlaps(ds) }

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
