package coord

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// InFlight is defrag/<member>: written, fenced by the turn's lock, right
// before a member's Defragment request, and removed once the member answers
// again. It is not leased: if its agent dies mid-defrag, the next lock
// holder finds it and waits for that member before doing anything.
type InFlight struct {
	Member   string    `json:"member_id"`
	Endpoint string    `json:"endpoint"`
	Agent    string    `json:"agent,omitempty"`
	Start    time.Time `json:"start"`
	// Deadline is when the agent stops waiting for the member (Start plus
	// --defrag-timeout).
	Deadline time.Time `json:"deadline"`
}

// Sizes are a member's database sizes at one moment.
type Sizes struct {
	DBSize      int64 `json:"db_size_bytes"`
	DBSizeInUse int64 `json:"db_size_in_use_bytes"`
	DBQuota     int64 `json:"db_quota_bytes"`
	Revision    int64 `json:"revision"`
}

// Last is last/<member>: the member's last defrag by an agent, whatever its
// result. The cooldown runs from End; sinceLastDefrag from LastSuccess.
type Last struct {
	Member      string    `json:"member_id"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	Result      string    `json:"result"`
	Error       string    `json:"error,omitempty"`
	Before      *Sizes    `json:"before,omitempty"`
	After       *Sizes    `json:"after,omitempty"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	Agent       string    `json:"agent,omitempty"`
	// Verify is the HashKV check after the defrag: VerifyPending from the end
	// of the turn until the check ends, then VerifyOK or VerifyFailed; empty
	// when it is off or the defrag failed.
	Verify string `json:"verify,omitempty"`
	// Check is where the HashKV check hashes the member (see Check); nil
	// when the check is off or the defrag failed.
	Check *Check `json:"check,omitempty"`
	// CopyRates are the in-use bytes per second that the member's last
	// successful defrags copied, the newest last.
	CopyRates []float64 `json:"copy_rates_bytes_per_second,omitempty"`
}

// Check is the HashKV check of a defrag: the revision the member is hashed
// at and, once the check passed (Verify is VerifyOK), the member's hash
// there and the compact revision etcd hashed under. The members that
// defragment after it in the same round hash themselves at the same
// revision and compare with this hash, so a round hashes each member once,
// plus one peer for the first.
type Check struct {
	Revision        int64  `json:"revision"`
	CompactRevision int64  `json:"compact_revision,omitempty"`
	Hash            uint32 `json:"hash,omitempty"`
}

// Trend is trend/<member>: a few samples of the member's sizes and Raft
// index, kept by its agent so that the growth rates it measures survive a
// restart of the agent. Written every few minutes at most (see package
// agent), never under the lock.
type Trend struct {
	Member  string        `json:"member_id"`
	Samples []TrendSample `json:"samples"`
}

// TrendSample is one Status read of a member.
type TrendSample struct {
	Time        time.Time `json:"t"`
	DBSize      int64     `json:"db_size"`
	DBSizeInUse int64     `json:"db_size_in_use"`
	RaftIndex   uint64    `json:"raft_index"`
}

// The values of Last.Verify.
const (
	VerifyPending = "pending"
	VerifyOK      = "ok"
	VerifyFailed  = "failed"
)

// Same reports whether l and o are the record of one defrag: the same agent,
// start and end.
func (l Last) Same(o Last) bool {
	return l.Agent == o.Agent && l.Start.Equal(o.Start) && l.End.Equal(o.End)
}

// Board reads and writes the agents' keys under one prefix through one
// client. It is safe for concurrent use.
type Board struct {
	cli  lock.Client
	keys Keys
}

// NewBoard returns the board of the keys under prefix, through cli.
func NewBoard(cli lock.Client, prefix string) *Board {
	return &Board{cli: cli, keys: NewKeys(prefix)}
}

// Keys is the board's key layout.
func (b *Board) Keys() Keys { return b.keys }

// Client is the client the board reads and writes through.
func (b *Board) Client() lock.Client { return b.cli }

// TurnLock is the mutex of the turns, for the session's agent.
func (b *Board) TurnLock(s *lock.Session) *lock.Mutex { return lock.NewMutex(s, b.keys.Lock()) }

// NoSpaceQueue is the queue taken under NOSPACE, for the session's agent.
func (b *Board) NoSpaceQueue(s *lock.Session) *lock.Mutex { return lock.NewMutex(s, b.keys.NoSpace()) }

// LockHolder returns the key that holds the turns' lock, or "". ctx bounds
// the request.
func (b *Board) LockHolder(ctx context.Context) (string, error) {
	return lock.Holder(ctx, b.cli, b.keys.Lock())
}

// NoSpaceHead returns the key at the head of the NOSPACE queue, or "".
func (b *Board) NoSpaceHead(ctx context.Context) (string, error) {
	return lock.Holder(ctx, b.cli, b.keys.NoSpace())
}

// LockTaken reports whether any agent holds or waits for the turns' lock,
// and the revision it was read at.
func (b *Board) LockTaken(ctx context.Context) (bool, int64, error) {
	resp, err := b.cli.Get(ctx, b.keys.Lock(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, 0, fmt.Errorf("get %s: %w", b.keys.Lock(), err)
	}
	return resp.Count > 0, resp.Header.Revision, nil
}

// WaitLockChange blocks until the turns' lock queue changes after revision
// rev, or ctx ends.
func (b *Board) WaitLockChange(ctx context.Context, rev int64) error {
	return WaitChange(ctx, b.cli, b.keys.Lock(), rev)
}

// WaitChange blocks until a key under the prefix changes after revision
// rev, or ctx ends.
func (b *Board) WaitChange(ctx context.Context, rev int64) error {
	return WaitChange(ctx, b.cli, b.keys.Prefix(), rev)
}

// Announce writes the announcement of the session's agent beside member
// and returns the revision of the write.
func (b *Board) Announce(ctx context.Context, s *lock.Session, member uint64, a Announcement) (int64, error) {
	return Announce(ctx, s, b.keys, member, a)
}

// OpAnnounce is the put of an announcement, for a transaction.
func (b *Board) OpAnnounce(s *lock.Session, member uint64, a Announcement) (clientv3.Op, error) {
	return OpAnnounce(s, b.keys, member, a)
}

// Announcements reads every agent's announcement and the revision they were
// read at.
func (b *Board) Announcements(ctx context.Context) ([]Announcement, int64, error) {
	return Announcements(ctx, b.cli, b.keys)
}

// WatchAnnouncements calls fn for announcements written after revision rev
// until ctx ends; see the function WatchAnnouncements.
func (b *Board) WatchAnnouncements(ctx context.Context, rev int64, fn func(Announcement)) error {
	return WatchAnnouncements(ctx, b.cli, b.keys, rev, fn)
}

// Last reads member's last-defrag record; found is false when there is none.
func (b *Board) Last(ctx context.Context, member uint64) (rec Record[Last], found bool, err error) {
	return Get[Last](ctx, b.cli, b.keys.Last(member))
}

// WaitLastChange blocks until member's last-defrag record is written or
// deleted after revision rev, or ctx ends.
func (b *Board) WaitLastChange(ctx context.Context, member uint64, rev int64) error {
	return WaitChange(ctx, b.cli, b.keys.Last(member), rev)
}

// Lasts reads every member's last-defrag record, by member. Records that do
// not decode are returned in bad.
func (b *Board) Lasts(ctx context.Context) (recs map[uint64]Last, bad []error, err error) {
	list, bad, err := List[Last](ctx, b.cli, b.keys.Lasts())
	if err != nil {
		return nil, nil, err
	}
	recs = make(map[uint64]Last, len(list))
	for _, r := range list {
		if id, ok := b.keys.MemberOf(r.Key); ok {
			recs[id] = r.Value
		}
	}
	return recs, bad, nil
}

// Trend reads member's trend record; found is false when there is none.
func (b *Board) Trend(ctx context.Context, member uint64) (t Trend, found bool, err error) {
	rec, found, err := Get[Trend](ctx, b.cli, b.keys.Trend(member))
	return rec.Value, found, err
}

// PutTrend writes member's trend record.
func (b *Board) PutTrend(ctx context.Context, member uint64, t Trend) error {
	key := b.keys.Trend(member)
	put, err := OpPutJSON(key, t)
	if err != nil {
		return err
	}
	if _, err := b.cli.Do(ctx, put); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// InFlight reads every in-flight record, by member, with the revisions they
// were written at.
func (b *Board) InFlight(ctx context.Context) (recs map[uint64]Record[InFlight], bad []error, err error) {
	list, bad, err := List[InFlight](ctx, b.cli, b.keys.Defrags())
	if err != nil {
		return nil, nil, err
	}
	recs = make(map[uint64]Record[InFlight], len(list))
	for _, r := range list {
		if id, ok := b.keys.MemberOf(r.Key); ok {
			recs[id] = r
		}
	}
	return recs, bad, nil
}

// MarkInFlight writes member's in-flight record and the optional
// announcement op in one transaction fenced by m, and returns the revision
// of the write; lock.ErrNotOwner (and nothing written) when m is not held.
func (b *Board) MarkInFlight(ctx context.Context, m *lock.Mutex, member uint64, rec InFlight, ann *clientv3.Op) (int64, error) {
	put, err := OpPutJSON(b.keys.Defrag(member), rec)
	if err != nil {
		return 0, err
	}
	ops := []clientv3.Op{put}
	if ann != nil {
		ops = append(ops, *ann)
	}
	return m.Fenced(ctx, ops...)
}

// SettleInFlight removes member's in-flight record written at rev, fenced by
// m: the next holder's work once that member answers again.
func (b *Board) SettleInFlight(ctx context.Context, m *lock.Mutex, member uint64, rev int64) error {
	key := b.keys.Defrag(member)
	_, err := m.Fenced(ctx, clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
		[]clientv3.Op{clientv3.OpDelete(key)}, nil))
	return err
}

// DropInFlight removes member's in-flight record if it is still the one
// written at rev (a defrag that was not sent; or, under NOSPACE, where only
// deletes are allowed, one that is over).
func (b *Board) DropInFlight(ctx context.Context, member uint64, rev int64) error {
	_, err := lock.DeleteIfUnchanged(ctx, b.cli, b.keys.Defrag(member), rev)
	return err
}

// ErrSettled is returned when a defrag's in-flight record was removed by
// someone else (the next lock holder, once the member answered) and a newer
// last-defrag record is there: the defrag's own record is not written.
var ErrSettled = errors.New("coord: in-flight record settled by another agent and a newer last-defrag record exists")

// RecordAndRelease ends a turn in one transaction fenced by m: it writes
// member's last record, removes its in-flight record (if still the one
// written at inflightRev), commits the optional announcement op, and
// releases m. It returns the revision last/ was written at, and whether m
// was released by it.
//
// If m was lost meanwhile (its lease expired during a long defrag), the
// record is written fenced by the in-flight record instead, which no one
// removes before the member answers; if that was removed already, the record
// is written unless a newer one is there (ErrSettled). An earlier attempt of
// the same transaction that etcd applied (a request repeated on another
// member) counts as done.
func (b *Board) RecordAndRelease(ctx context.Context, m *lock.Mutex, member uint64, inflightRev int64, last Last, ann *clientv3.Op) (rev int64, released bool, err error) {
	key, lastKey := b.keys.Defrag(member), b.keys.Last(member)
	put, err := OpPutJSON(lastKey, last)
	if err != nil {
		return 0, false, err
	}
	ops := []clientv3.Op{put, clientv3.OpDelete(key)}
	if ann != nil {
		ops = append(ops, *ann)
	}
	unchanged := clientv3.Compare(clientv3.ModRevision(key), "=", inflightRev)
	rev, err = m.Release(ctx, clientv3.OpTxn([]clientv3.Cmp{unchanged}, ops, nil))
	if err == nil {
		return rev, true, nil
	}
	if rec, found, gerr := b.Last(ctx, member); gerr == nil && found && rec.Value.Same(last) {
		return rec.Revision, true, nil
	}
	if !errors.Is(err, lock.ErrNotOwner) {
		return 0, false, err
	}
	ok, err := lock.PutIfUnchanged(ctx, b.cli, key, inflightRev, put, clientv3.OpDelete(key))
	switch {
	case err != nil:
		return 0, false, err
	case ok:
		rec, _, err := b.Last(ctx, member)
		return rec.Revision, false, err
	}
	older := clientv3.Compare(clientv3.ModRevision(lastKey), "<", inflightRev)
	resp, err := b.cli.Txn(ctx).If(older).Then(put).Commit()
	switch {
	case err != nil:
		return 0, false, fmt.Errorf("write %s: %w", lastKey, err)
	case !resp.Succeeded:
		return 0, false, ErrSettled
	}
	return resp.Header.Revision, false, nil
}

// UpdateLast rewrites member's last record, unless it changed since it was
// written at rev.
func (b *Board) UpdateLast(ctx context.Context, member uint64, rev int64, last Last) error {
	key := b.keys.Last(member)
	put, err := OpPutJSON(key, last)
	if err != nil {
		return err
	}
	_, err = lock.PutIfUnchanged(ctx, b.cli, key, rev, put)
	return err
}
