// Package etcdlog is etcd's own account of its defragmentations, as its log
// lines tell it: the messages that start and end one, and the Defrag interval
// the test harnesses build from them (internal/etcdtest from embedded
// members' log entries, test/e2e from member processes' JSON logs) to judge
// the agents from outside. It imports nothing of etcd.
package etcdlog

import (
	"fmt"
	"slices"
	"time"
)

// The log messages of etcd's own account of a defragmentation, in every
// line from 3.4 to 3.7 (mvcc/backend/backend.go in 3.4 and 3.5,
// storage/backend/backend.go in 3.6 and 3.7; etcdserver/api/v3rpc/maintenance.go).
const (
	// MsgStart is logged by the backend once it holds the batch-tx,
	// database and read-tx locks: from here on the member serves no reads
	// or writes.
	MsgStart = "defragmenting"
	// MsgEnd (3.5+) and MsgEnd34 (3.4) are logged by the backend just
	// before it releases those locks.
	MsgEnd   = "finished defragmenting directory"
	MsgEnd34 = "defragmented"
	// MsgFailed is logged by the maintenance server when Defragment returns
	// an error; the backend has released its locks by then.
	MsgFailed = "failed to defragment"
)

// Defrag is one defragmentation of one member, as the member itself logged
// it: from the moment its backend held the locks that block reads and writes
// until just before it released them.
type Defrag struct {
	Member   string    // member name
	MemberID uint64    // member ID
	Start    time.Time // timestamp of the start entry
	End      time.Time // timestamp of the end (or failure) entry; zero while running
	Err      string    // why it ended without success; empty on success and while running
	// SizeAfter is the database file's size right after the defrag, as the
	// end entry logs it (current-db-size-bytes, 3.4 to 3.7); 0 when it was
	// not logged.
	SizeAfter int64
	// SizeBefore is the file's size when the defrag started, as the start
	// entry logs it (current-db-size-bytes); 0 when it was not logged.
	SizeBefore int64
}

// Reclaimed is what the defrag gave back to the filesystem: the file's size
// before less its size after; 0 while running or when either was not
// logged.
func (d Defrag) Reclaimed() int64 {
	if d.Running() || d.SizeBefore == 0 || d.SizeAfter == 0 {
		return 0
	}
	return d.SizeBefore - d.SizeAfter
}

// Running reports whether the defragmentation had not ended when d was
// taken.
func (d Defrag) Running() bool { return d.End.IsZero() }

// Duration returns End-Start, or 0 while running.
func (d Defrag) Duration() time.Duration {
	if d.Running() {
		return 0
	}
	return d.End.Sub(d.Start)
}

// String formats d for messages.
func (d Defrag) String() string {
	end := "running"
	if !d.Running() {
		end = d.End.Format("15:04:05.000000")
	}
	s := fmt.Sprintf("%s(%x) %s..%s", d.Member, d.MemberID, d.Start.Format("15:04:05.000000"), end)
	if !d.Running() {
		s += fmt.Sprintf(" (%v)", d.Duration().Round(time.Millisecond))
	}
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
