package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// answerPoll is the pause between reads while waiting for a defragmented
// member to answer again.
const answerPoll = 100 * time.Millisecond

// defragDone is what defragmentAndWait saw.
type defragDone struct {
	took       time.Duration
	requestErr error // the Defragment request's error (a timeout: etcd may have gone on)
	answerErr  error // the member did not answer within the deadline
}

// defragmentAndWait sends the Defragment request for the member behind
// endpoint and waits until it answers a serializable read through reader —
// its backend is no longer blocked — even if the request ended first,
// because etcd goes on defragmenting a request whose client gave up. ctx
// bounds both (the defrag's deadline); it must not end when the cycle's
// does. stop is closed when the agent shuts down: from then on a member
// that refuses connections has exited (a rollout stops etcd and its
// sidecar together) and is not waited for any longer. It is the one way
// the agent defragments a member: its own in a turn, and any member in a
// NOSPACE recovery.
func (a *Agent) defragmentAndWait(ctx context.Context, endpoint string, reader memberReader, stop <-chan struct{}) defragDone {
	start := a.now()
	_, derr := a.local.Defragment(ctx, endpoint)
	werr := a.waitAnswers(ctx, reader, endpoint, stop)
	return defragDone{took: a.now().Sub(start), requestErr: derr, answerErr: werr}
}

// goneAfter is how long a member must refuse connections, once the agent
// shuts down, to count as exited.
const goneAfter = time.Second

// waitAnswers polls with serializable reads until the member behind reader
// answers — its backend is no longer blocked by a defrag — or ctx ends, or,
// once stop is closed, the member's endpoint has refused connections for
// goneAfter (nil stop: never). A member that defragments accepts
// connections; one whose process has exited refuses them.
func (a *Agent) waitAnswers(ctx context.Context, reader memberReader, endpoint string, stop <-chan struct{}) error {
	a.metrics.waiting.WithLabelValues(waitMember).Set(1)
	defer a.metrics.waiting.WithLabelValues(waitMember).Set(0)
	var refusing time.Time // since when the endpoint refuses connections
	for {
		err := a.answers(ctx, reader, false)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled:
			return fmt.Errorf("client closed: %w", err) // the agent is going away
		case !stopped(stop):
		case !refuses(ctx, endpoint):
			refusing = time.Time{}
		case refusing.IsZero():
			refusing = a.now()
		case a.now().Sub(refusing) >= goneAfter:
			return fmt.Errorf("%w: %s refuses connections while the agent shuts down (last read: %w)", errMemberGone, endpoint, err)
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

// errMemberGone is waitAnswers' end when the member exited.
var errMemberGone = errors.New("the member has exited")

func stopped(stop <-chan struct{}) bool {
	if stop == nil {
		return false
	}
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// refuses reports whether a connection to the endpoint (host:port,
// http(s)://host:port or unix(s)://path) is refused: nobody listens there.
func refuses(ctx context.Context, endpoint string) bool {
	network, addr := "tcp", endpoint
	if u, err := url.Parse(endpoint); err == nil && strings.Contains(endpoint, "://") {
		switch u.Scheme {
		case "unix", "unixs":
			network, addr = "unix", u.Host+u.Path
		default:
			addr = u.Host
		}
	}
	dctx, cancel := context.WithTimeout(ctx, answerPoll)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, network, addr)
	if err == nil {
		_ = conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// defragOutcome classifies the end of a defrag: "" when the member was
// defragmented, else the reason and what happened. shrank reports whether
// the file is smaller after the defrag than before (false when that could
// not be read); it decides a request that timed out, since etcd may never
// have received it.
func defragOutcome(d defragDone, endpoint string, shrank bool, defragTimeout time.Duration) (Reason, error) {
	switch derr, werr := d.requestErr, d.answerErr; {
	case errors.Is(werr, errMemberGone):
		return ReasonMemberBusy, fmt.Errorf("%w; its defrag record stays, so the next lock holder waits for it to answer again", werr)
	case werr != nil:
		if derr != nil {
			werr = fmt.Errorf("%w (the Defragment request: %w)", werr, derr)
		}
		return ReasonMemberBusy, fmt.Errorf("member did not answer within --defrag-timeout %v after the Defragment request: %w", defragTimeout, werr)
	case derr == nil:
		return "", nil
	case isPermissionDenied(derr):
		return ReasonPermission, fmt.Errorf("defragment %s: %w", endpoint, derr)
	case !isDeadline(derr):
		return ReasonUnavailable, fmt.Errorf("defragment %s: %w", endpoint, derr)
	case !shrank:
		return ReasonUnavailable, fmt.Errorf("defragment %s: %w; the member answers, but its file did not shrink: etcd probably never ran the defrag", endpoint, derr)
	}
	return "", nil // the request timed out; etcd went on and finished
}

// defragment is the turn itself: announce and mark the member in flight
// (fenced by the lock), renew the lease, defragment and wait until the
// member answers again. Then record the defrag and release the lock in one
// transaction, and verify the result off the turn: the reference hash was
// computed while the member defragmented (a peer's, by the first of a
// round, or the member before's own), only the member's own remains.
func (c *cycle) defragment(ctx context.Context, m *lock.Mutex) error {
	a := c.a
	sess := a.presence.session()
	if sess == nil {
		return c.skip(ReasonSessionLost, lock.ErrSessionExpired)
	}
	rec, recRev, err := c.markInFlight(ctx, m)
	if err != nil {
		return err
	}

	// From here on ctx no longer bounds anything: the defrag runs in etcd
	// whatever happens to this request.
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), rec.Deadline)
	defer cancel()
	var peer *pb.Member
	var during <-chan hashResult // the peer's hash, when the check takes one
	if a.cfg.VerifyHashKV {
		peer = c.checkPeer()
	}
	c.log.Info("defragmenting", "endpoint", c.st.Endpoint, "is_leader", c.st.isLeader(),
		"db_size_bytes", c.st.DBSize, "db_size_in_use_bytes", c.st.DBSizeInUse,
		"expected_defrag_seconds", c.expected.Seconds(), "copy_rate_source", c.rep.CopyRateSource)
	a.metrics.inProgress.Set(1)
	defer a.metrics.inProgress.Set(0)

	// The last check before the request, and no other request between the
	// two (the peer's hash below only starts, in the background):
	// the lease lives a whole TTL from this renewal, so no other agent can
	// take the lock before the request is sent unless this process pauses
	// that long right here (the README's residual risk).
	if err := c.renew(ctx, sess); err != nil {
		c.dropInflight(dctx, recRev)
		return c.skip(ReasonSessionLost, fmt.Errorf("lease cannot be renewed before the defrag: %w", err))
	}
	// The peer's hash starts after the renewal: a hash holds the peer's
	// backend read transaction for its whole scan, and a renewal that
	// reaches the leader waits for the leader to apply (P1 saw one wait
	// 200 ms for the hash of a 626 MiB member).
	if peer != nil && c.check.ref == 0 {
		during = c.hashPeer(dctx, peer, c.check.rev)
	}
	start := a.now()
	d := a.defragmentAndWait(dctx, c.st.Endpoint, a.local, ctx.Done())
	end := a.now()
	took := end.Sub(start)
	a.metrics.inProgress.Set(0)
	a.metrics.defragDuration.Observe(took.Seconds())
	c.rep.DefragSeconds = took.Seconds()

	out, leave, result := c.outcome(dctx, d, start, end, peer != nil)
	if leave {
		// The member did not come back in time. Leave the in-flight record:
		// the next lock holder waits for this member before anything else.
		a.metrics.defrags.WithLabelValues(resultError).Inc()
		return result
	}
	c.log.Info("defragmented", "result", out.Result, "defrag_seconds", took.Seconds(),
		"db_size_bytes", c.st.DBSize, "reclaimed_bytes", c.rep.Reclaimed)
	lastRev := c.record(dctx, m, recRev, out)
	label := out.Result
	if result == nil && peer != nil {
		if result = c.verifyRecorded(dctx, peer, during, lastRev, out); result != nil {
			label = resultVerifyFailed
		}
	}
	a.metrics.defrags.WithLabelValues(label).Inc()
	if result == nil {
		c.rep.Decision = DecisionDefragmented
		a.metrics.reclaimed.Add(float64(c.rep.Reclaimed))
		a.metrics.lastSuccess.Set(float64(end.UnixNano()) / 1e9)
	}
	return result
}

// markInFlight announces the defrag and writes the member's in-flight
// record, in one transaction fenced by the lock: the record and its
// revision, or the cycle's error (the lock lost, etcd unavailable).
func (c *cycle) markInFlight(ctx context.Context, m *lock.Mutex) (coord.InFlight, int64, error) {
	a := c.a
	rec := coord.InFlight{
		Member: fmt.Sprintf("%x", c.st.ID), Endpoint: c.st.Endpoint, Agent: a.cfg.Identity,
		Start: a.now(), Deadline: a.now().Add(a.cfg.DefragTimeout),
	}
	// The announcement goes with the record, in one write: a turn's
	// request path holds one write fewer, and no agent reads
	// "defragmenting" without the record or the other way round.
	ann := a.announceOp(c.st.ID, c.announcement(coord.StateDefragmenting))
	fctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	rev, err := a.board.MarkInFlight(fctx, m, c.st.ID, rec, ann)
	switch {
	case errors.Is(err, lock.ErrNotOwner):
		return rec, 0, c.skip(ReasonSessionLost, err)
	case err != nil:
		return rec, 0, c.unavailable(ctx, err)
	}
	return rec, rev, nil
}

// renew renews the session's lease right before the defrag request: an
// error when etcd does not, or grants less than half of --lock-ttl.
func (c *cycle) renew(ctx context.Context, sess *lock.Session) error {
	rctx, cancel := context.WithTimeout(ctx, c.a.cfg.CommandTimeout)
	defer cancel()
	ttl, err := sess.Refresh(rctx)
	if err == nil && ttl < c.a.cfg.LockTTL/2 {
		err = fmt.Errorf("etcd renewed it for %v only, less than half of --lock-ttl %v", ttl, c.a.cfg.LockTTL)
	}
	return err
}

// outcome is what the defrag d, between start and end, did: the last/
// record to write and the cycle's error (nil on success). leave is true
// when the member did not come back in time (member_busy): nothing is
// recorded then, and the in-flight record stays for the next lock holder.
func (c *cycle) outcome(ctx context.Context, d defragDone, start, end time.Time, verify bool) (out coord.Last, leave bool, result error) {
	a := c.a
	out = coord.Last{
		Member: fmt.Sprintf("%x", c.st.ID), Start: start, End: end, Before: c.st.sizes(), Agent: a.cfg.Identity,
	}
	if c.last != nil {
		out.LastSuccess, out.CopyRates = c.last.LastSuccess, c.last.CopyRates
	}
	shrank := false
	if d.answerErr == nil {
		if after, err := a.localStatus(ctx); err == nil {
			c.rep.After = after.sizes()
			c.rep.Reclaimed = max(c.st.DBSize-after.DBSize, 0)
			shrank = after.DBSize < c.st.DBSize
		}
	}
	reason, oerr := defragOutcome(d, c.st.Endpoint, shrank, a.cfg.DefragTimeout)
	switch reason {
	case ReasonMemberBusy:
		return out, true, c.fail(reason, oerr)
	case "":
		if d.requestErr != nil {
			c.log.Warn("defragment request timed out; etcd went on and finished", "err", d.requestErr)
		}
		out.Result, out.LastSuccess = resultSuccess, end
		out.CopyRates = withRate(out.CopyRates, c.st.DBSizeInUse, end.Sub(start))
		if verify {
			out.Verify, out.Check = coord.VerifyPending, &coord.Check{Revision: c.check.rev}
		}
		return out, false, nil
	case ReasonPermission:
		oerr = fmt.Errorf("%w (the etcd user %q needs the root role)", oerr, a.cfg.User)
	}
	out.Result, out.Error = resultError, oerr.Error()
	return out, false, c.fail(reason, oerr)
}

// verifyRecorded compares the member's hash with the peer's after the turn
// and updates the last/ record written at lastRev with the verdict. It
// returns the cycle's error when the hashes differ or the check could not be
// made.
func (c *cycle) verifyRecorded(ctx context.Context, peer *pb.Member, during <-chan hashResult, lastRev int64, out coord.Last) error {
	chk, err := c.verify(ctx, peer, during)
	if err == nil {
		out.Verify, out.Check = coord.VerifyOK, &chk
		c.updateRecord(ctx, lastRev, out)
		return nil
	}
	r := ReasonUnavailable // the check could not be made
	if errors.Is(err, errHashMismatch) {
		r = ReasonHashMismatch
	}
	out.Result, out.Verify, out.Error = resultVerifyFailed, coord.VerifyFailed, err.Error()
	c.updateRecord(ctx, lastRev, out)
	return c.fail(r, err)
}

// record ends the turn: last/<member>, the removal of the in-flight record,
// the verifying announcement (when the check follows) and the release of
// the lock, in one transaction (coord.Board.RecordAndRelease). Under NOSPACE
// only the removal is possible. It returns the revision last/ was written at
// (0 if it was not).
func (c *cycle) record(ctx context.Context, m *lock.Mutex, recRev int64, out coord.Last) int64 {
	a := c.a
	var ann *clientv3.Op
	if out.Verify == coord.VerifyPending {
		ann = a.announceOp(c.st.ID, coord.Announcement{State: coord.StateVerifying, Leader: c.st.isLeader()})
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	rev, released, err := a.board.RecordAndRelease(ctx, m, c.st.ID, recRev, out, ann)
	c.turn.released = released
	switch {
	case err == nil && !released:
		c.log.Warn("lock lost during the defrag; recorded under the in-flight record's fence")
	case errors.Is(err, coord.ErrSettled):
		c.log.Warn("another agent settled this member's in-flight record and a newer last-defrag record exists; not overwritten")
	case err != nil && isNoSpace(err):
		c.dropInflight(ctx, recRev)
	case err != nil:
		c.log.Error("recording the defrag failed; the next lock holder clears the in-flight record", "err", err)
	}
	return rev
}

// updateRecord writes the verification's outcome into last/<member>, unless
// the record changed since this turn wrote it at rev.
func (c *cycle) updateRecord(ctx context.Context, rev int64, out coord.Last) {
	if rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.a.cfg.CommandTimeout)
	defer cancel()
	if err := c.a.board.UpdateLast(ctx, c.st.ID, rev, out); err != nil {
		c.log.Warn("recording the verification failed", "err", err)
	}
}

// dropInflight removes this member's in-flight record of a defrag that was
// not sent (or, under NOSPACE, is over). If that fails, the next lock
// holder removes it once the member answers.
func (c *cycle) dropInflight(ctx context.Context, rev int64) {
	ctx, cancel := context.WithTimeout(ctx, c.a.cfg.CommandTimeout)
	defer cancel()
	if err := c.a.board.DropInFlight(ctx, c.st.ID, rev); err != nil {
		c.log.Debug("removing the in-flight record failed; the next lock holder removes it", "err", err)
	}
}

// settleInflight handles defrag records left by agents that lost their turn
// mid-defrag (killed, or their lease expired): it waits, up to DefragTimeout,
// for each such member to answer again, then removes the record. Until then
// no other member may start.
func (c *cycle) settleInflight(ctx context.Context, m *lock.Mutex) error {
	a := c.a
	lctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	recs, bad, err := a.board.InFlight(lctx)
	cancel()
	if err != nil {
		return c.unavailable(ctx, err)
	}
	for _, e := range bad {
		c.log.Warn("ignoring an unreadable in-flight record", "err", e)
	}
	for id, rec := range recs {
		if mem := findMember(c.members, id); mem != nil {
			cli, err := a.peerClient(mem)
			if err != nil {
				return c.unavailable(ctx, err)
			}
			c.log.Info("waiting for a member whose defrag outlived its agent's turn",
				"defragmenting_member", memberName(mem), "started", rec.Value.Start, "agent", rec.Value.Agent)
			start := a.now()
			wctx, cancel := context.WithTimeout(ctx, a.cfg.DefragTimeout)
			err = a.waitAnswers(wctx, cli, "", nil)
			cancel()
			if err != nil {
				return c.skip(ReasonMemberBusy, fmt.Errorf("member %s, defragmented since %s by %s, does not answer: %w",
					memberName(mem), rec.Value.Start.Format(time.RFC3339), rec.Value.Agent, err))
			}
			c.log.Info("member answers again", "defragmenting_member", memberName(mem),
				"waited_seconds", a.now().Sub(start).Seconds())
		}
		sctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
		err := a.board.SettleInFlight(sctx, m, id, rec.Revision)
		cancel()
		switch {
		case errors.Is(err, lock.ErrNotOwner):
			return c.skip(ReasonSessionLost, err)
		case err != nil:
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
	for _, m := range without(voters(c.members), c.st.ID) {
		s, err := a.statusOfAny(ctx, m.ClientURLs)
		if err != nil || lagBehind(c.st.RaftIndex, s.RaftAppliedIndex) > maxRaftLag {
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

// compact compacts to the current revision minus the retention. A failure is
// logged, not fatal: the defrag still reclaims what is already free.
func (c *cycle) compact(ctx context.Context, rev int64) {
	a := c.a
	target := rev - a.cfg.CompactionRetention
	if target <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DefragTimeout)
	defer cancel()
	if err := a.compactTo(ctx, target); err != nil {
		c.log.Warn("compaction failed; defragmenting anyway", "revision", target, "err", err)
		return
	}
	c.log.Info("compacted", "revision", target, "retention", a.cfg.CompactionRetention)
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
