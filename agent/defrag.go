package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// answerPoll is the pause between reads while waiting for a defragmented
// member to answer again.
const answerPoll = 100 * time.Millisecond

// waitAnswers polls cli with serializable reads until the member behind it
// answers — its backend is no longer blocked by a defrag — or ctx ends.
func (a *Agent) waitAnswers(ctx context.Context, cli *clientv3.Client) error {
	a.metrics.waiting.WithLabelValues(waitMember).Set(1)
	defer a.metrics.waiting.WithLabelValues(waitMember).Set(0)
	for {
		err := a.answers(ctx, cli, false)
		if err == nil {
			return nil
		}
		if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
			return fmt.Errorf("client closed: %w", err) // the agent is going away
		}
		t := time.NewTimer(answerPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last read: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// settleInflight handles defrag records left by agents that lost their turn
// mid-defrag (killed, or their lease expired): it waits, up to DefragTimeout,
// for each such member to answer again, then removes the record. Until then
// no other member may start.
func (c *cycle) settleInflight(ctx context.Context, m *lock.Mutex) error {
	a := c.a
	lctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	recs, bad, err := lock.List[inflightRecord](lctx, a.clusterClient(), a.keys.Defrags())
	cancel()
	if err != nil {
		return c.unavailable(ctx, err)
	}
	for _, e := range bad {
		c.log.Warn("ignoring an unreadable in-flight record", "err", e)
	}
	for _, rec := range recs {
		id, ok := a.keys.MemberOf(rec.Key)
		if !ok {
			continue
		}
		mem := findMember(c.members, id)
		if mem != nil {
			cli, err := a.peerClient(mem)
			if err != nil {
				return c.unavailable(ctx, err)
			}
			c.log.Info("waiting for a member whose defrag outlived its agent's turn",
				"defragmenting_member", memberName(mem), "started", rec.Value.Start, "agent", rec.Value.Agent)
			start := a.now()
			wctx, cancel := context.WithTimeout(ctx, a.cfg.DefragTimeout)
			err = a.waitAnswers(wctx, cli)
			cancel()
			if err != nil {
				return c.skip(ReasonMemberBusy, fmt.Errorf("member %s, defragmented since %s by %s, does not answer: %w",
					memberName(mem), rec.Value.Start.Format(time.RFC3339), rec.Value.Agent, err))
			}
			c.log.Info("member answers again", "defragmenting_member", memberName(mem),
				"waited_seconds", a.now().Sub(start).Seconds())
		}
		dctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
		_, err := m.Fenced(dctx, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(rec.Key), "=", rec.Revision)},
			[]clientv3.Op{clientv3.OpDelete(rec.Key)}, nil))
		cancel()
		if err != nil {
			if errors.Is(err, lock.ErrNotOwner) {
				return c.skip(ReasonSessionLost, err)
			}
			return c.unavailable(ctx, err)
		}
	}
	return nil
}

// moveLeader hands leadership to a voting follower that answers and is caught
// up, so the member is defragmented as a follower. Failing that, the member is
// defragmented as the leader (the followers went first already).
func (c *cycle) moveLeader(ctx context.Context) {
	a := c.a
	var (
		best   *pb.Member
		bestSt memberStatus
	)
	for _, m := range voters(c.members) {
		if m.ID == c.st.ID {
			continue
		}
		s, err := a.statusOfAny(ctx, m.ClientURLs)
		if err != nil || s.RaftAppliedIndex+maxRaftLag < c.st.RaftIndex {
			continue
		}
		if best == nil || s.RaftAppliedIndex > bestSt.RaftAppliedIndex {
			best, bestSt = m, s
		}
	}
	if best == nil {
		c.log.Warn("no caught-up follower to hand leadership to; defragmenting as the leader")
		return
	}
	mctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	if _, err := a.local.MoveLeader(mctx, best.ID); err != nil {
		c.log.Warn("moving leadership failed; defragmenting as the leader", "to", memberName(best), "err", err)
		return
	}
	for {
		st, err := a.localStatus(mctx)
		if err != nil {
			c.log.Warn("status after moving leadership failed", "err", err)
			return
		}
		if !st.isLeader() {
			c.observe(st)
			c.rep.Leader = true // it led when the cycle decided
			c.log.Info("moved leadership", "to", memberName(best))
			return
		}
		select {
		case <-mctx.Done():
			c.log.Warn("leadership did not move in time; defragmenting as the leader", "to", memberName(best))
			return
		case <-time.After(answerPoll):
		}
	}
}

// compactTo compacts the keyspace to rev and waits for the compaction to be
// applied to the backend. A revision already compacted is not an error.
func (a *Agent) compactTo(ctx context.Context, rev int64) error {
	_, err := a.local.Compact(ctx, rev, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return fmt.Errorf("compact to %d: %w", rev, err)
	}
	return nil
}

// defragment is the turn itself: announce and mark the member in flight
// (fenced by the lock), renew the lease, defragment, and wait until the
// member answers again — even if the request or ctx ended first, because
// etcd goes on. Then record the defrag and release the lock in one
// transaction, and verify the result off the turn: the peer's hash was
// computed while the member defragmented, only the member's own remains.
func (c *cycle) defragment(ctx context.Context, m *lock.Mutex, last *lastRecord) error {
	a := c.a
	a.mu.Lock()
	sess := a.session
	a.mu.Unlock()

	key := a.keys.Defrag(c.st.ID)
	rec := inflightRecord{
		Member: fmt.Sprintf("%x", c.st.ID), Endpoint: c.st.Endpoint, Agent: a.cfg.Identity,
		Start: a.now(), Deadline: a.now().Add(a.cfg.DefragTimeout),
	}
	put, err := lock.OpPutJSON(key, rec)
	if err != nil {
		return c.fail(ReasonUnavailable, err)
	}
	_ = c.announce(ctx, lock.StateDefragmenting)
	fctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	recRev, err := m.Fenced(fctx, put)
	cancel()
	switch {
	case errors.Is(err, lock.ErrNotOwner):
		return c.skip(ReasonSessionLost, err)
	case err != nil:
		return c.unavailable(ctx, err)
	}

	// From here on ctx no longer bounds anything: the defrag runs in etcd
	// whatever happens to this request.
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), rec.Deadline)
	defer cancel()
	var peerHash <-chan hashResult
	if a.cfg.VerifyHashKV {
		peerHash = c.hashPeer(dctx, c.st.Revision)
	}

	c.log.Info("defragmenting", "endpoint", c.st.Endpoint, "is_leader", c.st.isLeader(),
		"db_size_bytes", c.st.DBSize, "db_size_in_use_bytes", c.st.DBSizeInUse,
		"expected_defrag_seconds", c.expected.Seconds(), "copy_rate_source", c.rep.CopyRateSource)
	a.metrics.inProgress.Set(1)
	defer a.metrics.inProgress.Set(0)

	// The last check before the request, and nothing else between the two:
	// the lease lives a whole TTL from this renewal, so no other agent can
	// take the lock before the request is sent unless this process pauses
	// that long right here (the README's residual risk).
	rctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	ttl, err := sess.Refresh(rctx)
	cancel()
	if err != nil || ttl < a.cfg.LockTTL/2 {
		if err == nil {
			err = fmt.Errorf("etcd renewed it for %v only, less than half of --lock-ttl %v", ttl, a.cfg.LockTTL)
		}
		c.dropInflight(dctx, key, recRev)
		return c.skip(ReasonSessionLost, fmt.Errorf("lease cannot be renewed before the defrag: %w", err))
	}
	start := a.now()
	_, derr := a.local.Defragment(dctx, c.st.Endpoint)
	werr := a.waitAnswers(dctx, a.local)
	end := a.now()
	a.metrics.inProgress.Set(0)
	took := end.Sub(start)
	a.metrics.defragDuration.Observe(took.Seconds())
	c.rep.DefragSeconds = took.Seconds()

	out := lastRecord{
		Member: rec.Member, Start: start, End: end, Before: c.st.sizes(), Agent: a.cfg.Identity,
	}
	if last != nil {
		out.LastSuccess, out.CopyRates = last.LastSuccess, last.CopyRates
	}
	result := c.defragResult(dctx, derr, werr)
	if werr != nil {
		// The member did not come back in time. Leave the in-flight record:
		// the next lock holder waits for this member before anything else.
		a.metrics.defrags.WithLabelValues(resultError).Inc()
		return result
	}
	if result == nil {
		out.Result, out.LastSuccess = resultSuccess, end
		out.CopyRates = withRate(out.CopyRates, c.st.DBSizeInUse, took)
		if peerHash != nil {
			out.Verify = verifyPending
		}
	} else {
		out.Result, out.Error = resultError, c.rep.Error
	}
	c.log.Info("defragmented", "result", out.Result, "defrag_seconds", took.Seconds(),
		"db_size_bytes", c.st.DBSize, "reclaimed_bytes", c.rep.Reclaimed)
	lastRev := c.recordAndRelease(dctx, m, key, recRev, out)

	if result == nil && peerHash != nil {
		if err := c.verify(dctx, peerHash); err != nil {
			r := ReasonUnavailable // the check could not be made
			if errors.Is(err, errHashMismatch) {
				r = ReasonHashMismatch
			}
			result = c.fail(r, err)
			out.Result, out.Verify, out.Error = resultVerifyFailed, verifyFailed, err.Error()
		} else {
			out.Verify = verifyOK
		}
		c.updateRecord(dctx, lastRev, out)
	}
	a.metrics.defrags.WithLabelValues(out.Result).Inc()
	if result == nil {
		c.rep.Decision = DecisionDefragmented
		a.metrics.reclaimed.Add(float64(c.rep.Reclaimed))
		a.metrics.lastSuccess.Set(float64(end.UnixNano()) / 1e9)
	}
	return result
}

// defragResult classifies the end of a defrag: nil when the member was
// defragmented (it answers again and its file shrank), the cycle's error
// otherwise. It reads the member's sizes after the defrag into the report.
func (c *cycle) defragResult(ctx context.Context, derr, werr error) error {
	a := c.a
	switch {
	case werr != nil:
		if derr != nil {
			werr = fmt.Errorf("%w (the Defragment request: %w)", werr, derr)
		}
		return c.fail(ReasonMemberBusy, fmt.Errorf("member did not answer within --defrag-timeout %v after the Defragment request: %w",
			a.cfg.DefragTimeout, werr))
	case derr != nil && isPermissionDenied(derr):
		return c.fail(ReasonPermission, fmt.Errorf("defragment %s: %w (the etcd user %q needs the root role)", c.st.Endpoint, derr, a.cfg.User))
	case derr != nil && !isTimeout(derr):
		return c.fail(ReasonUnavailable, fmt.Errorf("defragment %s: %w", c.st.Endpoint, derr))
	}
	after, err := a.localStatus(ctx)
	if err == nil {
		c.rep.After = after.sizes()
		c.rep.Reclaimed = max(c.st.DBSize-after.DBSize, 0)
	}
	if derr != nil {
		// The request timed out. etcd goes on with a defrag it received,
		// but it may never have received this one: count it only if the
		// file shrank.
		if err != nil || after.DBSize >= c.st.DBSize {
			return c.fail(ReasonUnavailable, fmt.Errorf("defragment %s: %w; the member answers, but its file did not shrink (%d bytes): etcd probably never ran the defrag",
				c.st.Endpoint, derr, c.st.DBSize))
		}
		c.log.Warn("defragment request timed out; etcd went on and finished", "err", derr)
	}
	return nil
}

// dropInflight removes the in-flight record of a defrag that was not sent.
// If that fails, the next lock holder removes it once the member answers.
func (c *cycle) dropInflight(ctx context.Context, key string, rev int64) {
	ctx, cancel := context.WithTimeout(ctx, c.a.cfg.CommandTimeout)
	defer cancel()
	if _, err := lock.DeleteIfUnchanged(ctx, c.a.clusterClient(), key, rev); err != nil {
		c.log.Debug("removing the in-flight record failed; the next lock holder removes it", "err", err)
	}
}

// recordAndRelease writes last/<member>, removes the in-flight record,
// announces that the agent verifies (when it does) and releases the lock,
// in one transaction fenced by the lock. If the lock was lost during the
// defrag (lease expired while the leader's member was blocked), the record
// is written under the in-flight record's fence instead, which no one else
// removes before this member answers. Under NOSPACE only the removal is
// possible. It returns the revision last/ was written at (0 if it was not).
func (c *cycle) recordAndRelease(ctx context.Context, m *lock.Mutex, key string, recRev int64, out lastRecord) int64 {
	a := c.a
	put, err := lock.OpPutJSON(a.keys.Last(c.st.ID), out)
	if err != nil {
		c.log.Error("encoding the defrag record failed", "err", err)
		return 0
	}
	ops := []clientv3.Op{put, clientv3.OpDelete(key)}
	if out.Verify == verifyPending {
		a.mu.Lock()
		sess := a.session
		a.mu.Unlock()
		if ann, err := lock.OpAnnounce(sess, a.keys, c.st.ID, lock.Announcement{
			State: lock.StateVerifying, Leader: c.st.isLeader(), Agent: a.cfg.Identity, Version: a.cfg.Version, Time: a.now(),
		}); err == nil {
			ops = append(ops, ann)
		}
	}
	unchanged := clientv3.Compare(clientv3.ModRevision(key), "=", recRev)
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	rev, err := m.Release(ctx, clientv3.OpTxn([]clientv3.Cmp{unchanged}, ops, nil))
	if err == nil {
		c.released = true
		return rev
	}
	if mine, rev := c.recorded(ctx, out); mine {
		// An earlier attempt of this transaction was applied (a member that
		// stalled answered too late): recorded and released already.
		c.released = true
		return rev
	}
	if errors.Is(err, lock.ErrNotOwner) {
		c.log.Warn("lock lost during the defrag; recording under the in-flight record's fence")
		var ok bool
		ok, err = lock.PutIfUnchanged(ctx, a.clusterClient(), key, recRev, put, clientv3.OpDelete(key))
		switch {
		case err == nil && ok:
			return c.lastRevision(ctx, out)
		case err == nil:
			// The next lock holder settled the record once the member
			// answered. The defrag still happened: record it, unless a
			// record newer than this defrag is there already.
			older := clientv3.Compare(clientv3.ModRevision(a.keys.Last(c.st.ID)), "<", recRev)
			resp, terr := a.clusterClient().Txn(ctx).If(older).Then(put).Commit()
			switch {
			case terr != nil:
				err = terr
			case !resp.Succeeded:
				c.log.Warn("another agent settled this member's in-flight record and a newer last-defrag record exists; not overwritten")
				return 0
			default:
				c.log.Info("another agent settled this member's in-flight record; last-defrag record written")
				return resp.Header.Revision
			}
		}
	}
	if err != nil && isNoSpace(err) {
		_, err = lock.DeleteIfUnchanged(ctx, a.clusterClient(), key, recRev)
	}
	if err != nil {
		c.log.Error("recording the defrag failed; the next lock holder clears the in-flight record", "err", err)
	}
	return 0
}

// recorded reports whether last/<member> holds out (written by this turn),
// and the revision it was written at.
func (c *cycle) recorded(ctx context.Context, out lastRecord) (bool, int64) {
	rec, found, err := lock.Get[lastRecord](ctx, c.a.clusterClient(), c.a.keys.Last(c.st.ID))
	if err != nil || !found {
		return false, 0
	}
	v := rec.Value
	return v.Agent == out.Agent && v.Start.Equal(out.Start) && v.End.Equal(out.End), rec.Revision
}

// lastRevision returns the revision of last/<member> if it holds out, else 0.
func (c *cycle) lastRevision(ctx context.Context, out lastRecord) int64 {
	if mine, rev := c.recorded(ctx, out); mine {
		return rev
	}
	return 0
}

// updateRecord writes the verification's outcome into last/<member>, unless
// the record changed since this turn wrote it at rev.
func (c *cycle) updateRecord(ctx context.Context, rev int64, out lastRecord) {
	if rev == 0 {
		return
	}
	a := c.a
	put, err := lock.OpPutJSON(a.keys.Last(c.st.ID), out)
	if err != nil {
		c.log.Error("encoding the defrag record failed", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	if _, err := lock.PutIfUnchanged(ctx, a.clusterClient(), a.keys.Last(c.st.ID), rev, put); err != nil {
		c.log.Warn("recording the verification failed", "err", err)
	}
}

// hashResult is a HashKV answer.
type hashResult struct {
	resp     *clientv3.HashKVResponse
	endpoint string
	id       uint64
	err      error
}

// hashPeer computes, in the background, the HashKV of a peer — the leader,
// or a follower when this member leads — at revision rev, which this member
// has applied: it runs while this member defragments. The channel yields
// one result; none when there is no peer (a single voting member).
func (c *cycle) hashPeer(ctx context.Context, rev int64) <-chan hashResult {
	var peer *pb.Member
	for _, m := range voters(c.members) {
		if m.ID == c.st.ID {
			continue
		}
		if m.ID == c.st.Leader || peer == nil {
			peer = m
		}
	}
	if peer == nil {
		return nil
	}
	out := make(chan hashResult, 1)
	go func() {
		r := hashResult{id: peer.ID}
		var errs []error
		for _, u := range peer.ClientURLs {
			r.resp, r.err = c.a.local.HashKV(ctx, u, rev)
			if r.err == nil {
				r.endpoint = u
				break
			}
			errs = append(errs, r.err)
		}
		if r.err != nil {
			r.err = fmt.Errorf("hashkv of member %x at %d: %w", peer.ID, rev, errors.Join(errs...))
		}
		out <- r
	}()
	return out
}

// verify compares this member's HashKV with the peer's, at the revision the
// peer was hashed at while this member defragmented. If that cannot be
// compared — the peer's hash failed, or a compaction came between the two —
// it hashes both again at a revision both have applied now.
func (c *cycle) verify(ctx context.Context, peerHash <-chan hashResult) error {
	ph := <-peerHash
	if ph.err == nil {
		self, err := c.a.local.HashKV(ctx, c.st.Endpoint, c.st.Revision)
		if err == nil && self.CompactRevision == ph.resp.CompactRevision {
			return c.compare(c.st.Revision, self, c.st.ID, ph.resp, ph.id)
		}
		c.log.Debug("hashes at the defrag's revision not comparable; hashing again", "revision", c.st.Revision, "err", err)
	} else {
		c.log.Debug("peer hash during the defrag failed; hashing again", "err", ph.err)
	}
	var peerURLs []string
	for _, m := range voters(c.members) {
		if m.ID == ph.id {
			peerURLs = m.ClientURLs
		}
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = c.compareHash(ctx, peerURLs)
		if err == nil || !errors.Is(err, errCompactionRaced) {
			return err
		}
	}
	return err
}

// compare checks two hashes taken at rev with the same compact revision.
func (c *cycle) compare(rev int64, h1 *clientv3.HashKVResponse, id1 uint64, h2 *clientv3.HashKVResponse, id2 uint64) error {
	if h1.Hash != h2.Hash {
		return fmt.Errorf("verify: %w at revision %d: member %x has %d, member %x has %d; check the cluster for corruption",
			errHashMismatch, rev, id1, h1.Hash, id2, h2.Hash)
	}
	c.log.Debug("hashkv matches", "revision", rev, "peer", fmt.Sprintf("%x", id2), "hash", h1.Hash)
	return nil
}

var (
	errCompactionRaced = errors.New("compaction changed between the two hashes")
	errHashMismatch    = errors.New("HashKV differs")
)

// compareHash computes HashKV on this member and a peer at one revision.
func (c *cycle) compareHash(ctx context.Context, peerURLs []string) error {
	a := c.a
	self, err := a.localStatus(ctx)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	peer, err := a.statusOfAny(ctx, peerURLs)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	rev := min(self.Revision, peer.Revision)
	// Both members hash their whole key space: in parallel, the check
	// takes one hash's time.
	type hashed struct {
		resp *clientv3.HashKVResponse
		err  error
	}
	peerHash := make(chan hashed, 1)
	go func() {
		r, err := a.local.HashKV(ctx, peer.Endpoint, rev)
		peerHash <- hashed{r, err}
	}()
	h1, err := a.local.HashKV(ctx, self.Endpoint, rev)
	ph := <-peerHash
	if err != nil {
		return fmt.Errorf("verify: hashkv of %s at %d: %w", self.Endpoint, rev, err)
	}
	h2, err := ph.resp, ph.err
	if err != nil {
		return fmt.Errorf("verify: hashkv of %s at %d: %w", peer.Endpoint, rev, err)
	}
	if h1.CompactRevision != h2.CompactRevision {
		return errCompactionRaced
	}
	return c.compare(rev, h1, self.ID, h2, peer.ID)
}

// isTimeout tells a request that ended on its deadline (etcd may go on).
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "DeadlineExceeded") ||
		strings.Contains(err.Error(), "context deadline exceeded")
}
