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

// defragment is the turn itself: mark the member in flight (fenced by the
// lock), defragment it, wait until it answers again — even if the request or
// ctx ended first, because etcd goes on — verify, and record.
func (c *cycle) defragment(ctx context.Context, m *lock.Mutex, last *lastRecord) error {
	a := c.a
	a.mu.Lock()
	sess := a.session
	a.mu.Unlock()

	// The lease must outlive the request's trip: renew it now and make sure
	// it has at least half its TTL left.
	rctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	ttl, err := sess.Refresh(rctx)
	cancel()
	if err != nil || ttl < a.cfg.LockTTL/2 {
		return c.skip(ReasonSessionLost, fmt.Errorf("lease cannot be renewed (ttl %v): %w", ttl, err))
	}

	start := a.now()
	rec := inflightRecord{
		Member: fmt.Sprintf("%x", c.st.ID), Endpoint: c.st.Endpoint, Agent: a.cfg.Identity,
		Start: start, Deadline: start.Add(a.cfg.DefragTimeout),
	}
	key := a.keys.Defrag(c.st.ID)
	put, err := lock.OpPutJSON(key, rec)
	if err != nil {
		return c.fail(ReasonUnavailable, err)
	}
	fctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	recRev, err := m.Fenced(fctx, put)
	cancel()
	switch {
	case errors.Is(err, lock.ErrNotOwner):
		return c.skip(ReasonSessionLost, err)
	case err != nil:
		return c.unavailable(ctx, err)
	}

	_ = c.announce(ctx, lock.StateDefragmenting)
	c.log.Info("defragmenting", "endpoint", c.st.Endpoint, "is_leader", c.st.isLeader(),
		"db_size_bytes", c.st.DBSize, "db_size_in_use_bytes", c.st.DBSizeInUse)
	a.metrics.inProgress.Set(1)

	// From here on ctx no longer bounds anything: the defrag runs in etcd
	// whatever happens to this request.
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), rec.Deadline)
	defer cancel()
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
		out.LastSuccess = last.LastSuccess
	}
	var result error
	switch {
	case werr != nil:
		// The member did not come back in time. Leave the in-flight record:
		// the next lock holder waits for this member before anything else.
		a.metrics.defrags.WithLabelValues(resultError).Inc()
		if derr != nil {
			werr = fmt.Errorf("%w (the Defragment request: %w)", werr, derr)
		}
		return c.fail(ReasonMemberBusy, fmt.Errorf("member did not answer within --defrag-timeout %v after the Defragment request: %w",
			a.cfg.DefragTimeout, werr))
	case derr != nil && isPermissionDenied(derr):
		result = c.fail(ReasonPermission, fmt.Errorf("defragment %s: %w (the etcd user %q needs the root role)", c.st.Endpoint, derr, a.cfg.User))
	case derr != nil && !isTimeout(derr):
		result = c.fail(ReasonUnavailable, fmt.Errorf("defragment %s: %w", c.st.Endpoint, derr))
	}

	if result == nil {
		after, err := a.localStatus(dctx)
		if err == nil {
			c.rep.After = after.sizes()
			out.After = c.rep.After
			c.rep.Reclaimed = max(c.st.DBSize-after.DBSize, 0)
		}
		if derr != nil {
			// The request timed out. etcd goes on with a defrag it received,
			// but it may never have received this one: count it only if the
			// file shrank.
			if err != nil || after.DBSize >= c.st.DBSize {
				result = c.fail(ReasonUnavailable, fmt.Errorf("defragment %s: %w; the member answers, but its file did not shrink (%d bytes): etcd probably never ran the defrag",
					c.st.Endpoint, derr, c.st.DBSize))
			} else {
				c.log.Warn("defragment request timed out; etcd went on and finished",
					"err", derr, "defrag_seconds", took.Seconds())
			}
		}
	}
	if result == nil {
		if a.cfg.VerifyHashKV {
			if err := c.verify(dctx); err != nil {
				a.metrics.defrags.WithLabelValues(resultVerifyFailed).Inc()
				r := ReasonUnavailable // the check could not be made
				if errors.Is(err, errHashMismatch) {
					r = ReasonHashMismatch
				}
				result = c.fail(r, err)
				out.Result = resultVerifyFailed
			}
		}
	}
	switch {
	case result == nil:
		out.Result, out.LastSuccess = resultSuccess, end
		c.rep.Decision = DecisionDefragmented
		a.metrics.defrags.WithLabelValues(resultSuccess).Inc()
		a.metrics.reclaimed.Add(float64(c.rep.Reclaimed))
		a.metrics.lastSuccess.Set(float64(end.UnixNano()) / 1e9)
	case out.Result == "":
		out.Result = resultError
		a.metrics.defrags.WithLabelValues(resultError).Inc()
	}
	if result != nil {
		out.Error = c.rep.Error
	}
	c.log.Info("defragmented", "result", out.Result, "defrag_seconds", took.Seconds(),
		"db_size_bytes", c.st.DBSize, "reclaimed_bytes", c.rep.Reclaimed)
	c.record(dctx, m, key, recRev, out)
	return result
}

// record writes last/<member> and removes the in-flight record. It is fenced
// by the lock; if the lock was lost during the defrag (lease expired while
// the leader's member was blocked), it is fenced by the in-flight record
// instead, which no one else removes before this member answers. Under
// NOSPACE only the removal is possible.
func (c *cycle) record(ctx context.Context, m *lock.Mutex, key string, recRev int64, out lastRecord) {
	a := c.a
	put, err := lock.OpPutJSON(a.keys.Last(c.st.ID), out)
	if err != nil {
		c.log.Error("encoding the defrag record failed", "err", err)
		return
	}
	unchanged := clientv3.Compare(clientv3.ModRevision(key), "=", recRev)
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	_, err = m.Fenced(ctx, clientv3.OpTxn([]clientv3.Cmp{unchanged}, []clientv3.Op{put, clientv3.OpDelete(key)}, nil))
	if errors.Is(err, lock.ErrNotOwner) {
		c.log.Warn("lock lost during the defrag; recording under the in-flight record's fence")
		var ok bool
		ok, err = lock.PutIfUnchanged(ctx, a.clusterClient(), key, recRev, put, clientv3.OpDelete(key))
		if err == nil && !ok {
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
				return
			default:
				c.log.Info("another agent settled this member's in-flight record; last-defrag record written")
				return
			}
		}
	}
	if err != nil && isNoSpace(err) {
		_, err = lock.DeleteIfUnchanged(ctx, a.clusterClient(), key, recRev)
	}
	if err != nil {
		c.log.Error("recording the defrag failed; the next lock holder clears the in-flight record", "err", err)
	}
}

// verify compares the member's HashKV with a peer's — the leader, or a
// follower when this member leads — at a revision both have applied.
func (c *cycle) verify(ctx context.Context) error {
	var peerURLs []string
	for _, m := range voters(c.members) {
		if m.ID == c.st.ID {
			continue
		}
		if m.ID == c.st.Leader || peerURLs == nil {
			peerURLs = m.ClientURLs
		}
	}
	if peerURLs == nil {
		return nil // a single voting member has no peer to compare with
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
	// takes one hash's time (most of a handoff's time on a large database).
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
	if h1.Hash != h2.Hash {
		return fmt.Errorf("verify: %w at revision %d: member %x has %d, member %x has %d; check the cluster for corruption",
			errHashMismatch, rev, self.ID, h1.Hash, peer.ID, h2.Hash)
	}
	c.log.Debug("hashkv matches", "revision", rev, "peer", fmt.Sprintf("%x", peer.ID), "hash", h1.Hash)
	return nil
}

// isTimeout tells a request that ended on its deadline (etcd may go on).
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "DeadlineExceeded") ||
		strings.Contains(err.Error(), "context deadline exceeded")
}
