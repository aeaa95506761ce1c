package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// A turn is what an agent that asked for a defrag goes through: if its
// member leads, the leader's wait for the followers' say; then the lock; under
// it fresh checks, the defrag and its record. A member that leads when the
// checks run, although it did not when it asked, or a follower that asked
// meanwhile, sends the turn back to the leader's wait.

// step is where a turn goes next.
type step int

const (
	stepLeaderWait step = iota // the leader's agent waits for the followers
	stepYield                  // a follower waits for the followers that need a defrag more
	stepLock                   // take the lock, check and defragment under it
	stepDone                   // the turn is over
)

// maxTurns bounds how often one cycle goes back to the leader's wait because
// leadership moved to its member or a follower asked meanwhile.
const maxTurns = 3

// turn is a cycle's state of the leader's wait.
type turn struct {
	askedRev      int64     // revision of this agent's latest pending announcement
	askedAsLeader bool      // that announcement said the member leads
	askedAt       time.Time // when it was sent
	deadline      time.Time // end of the leader's wait, set when it first waits
	waited        bool      // the leader's wait ended after the latest pending announcement
	released      bool      // the lock was released with the turn's record
	need          need      // what the pending announcement said of the member
}

// asked records a pending announcement: the leader's wait, if any, starts
// over from it.
func (t *turn) asked(rev int64, leader bool, at time.Time) {
	t.askedRev, t.askedAsLeader, t.askedAt, t.waited = rev, leader, at, false
}

// takeTurn runs the turn's steps until it is over.
func (c *cycle) takeTurn(ctx context.Context) error {
	next := stepLock
	if c.st.isLeader() {
		next = stepLeaderWait
	}
	locks := 0
	for {
		switch next {
		case stepLeaderWait:
			if err := c.waitFollowers(ctx); err != nil {
				return err
			}
			next = stepLock
		case stepYield:
			if err := c.waitNeedier(ctx); err != nil {
				return err
			}
			next = stepLock
		case stepLock:
			if locks == maxTurns {
				return c.skip(ReasonLeaderWait, fmt.Errorf("leadership or followers changed %d times while waiting for the turn (leader's wait, or followers nearer their quota first)", locks))
			}
			locks++
			var err error
			if next, err = c.withLock(ctx); next == stepDone {
				return err
			}
		}
	}
}

// withLock takes the lock, does the work under it and releases it (with the
// turn's record, or on a fresh bounded context). It returns the next step.
func (c *cycle) withLock(ctx context.Context) (step, error) {
	a := c.a
	sess := a.presence.session()
	if sess == nil { // abandoned after a failed unlock in an earlier turn
		return stepDone, c.skip(ReasonSessionLost, lock.ErrSessionExpired)
	}
	m := a.board.TurnLock(sess)

	start := a.now()
	a.metrics.waiting.WithLabelValues(waitLock).Set(1)
	lctx, cancel := context.WithTimeout(ctx, a.cfg.LockTimeout)
	err := m.Lock(lctx)
	cancel()
	a.metrics.waiting.WithLabelValues(waitLock).Set(0)
	waited := a.now().Sub(start)
	a.metrics.lockWait.Observe(waited.Seconds())
	c.rep.LockWaitSeconds += waited.Seconds()
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return stepDone, c.skip(ReasonShutdown, err)
	case errors.Is(err, lock.ErrSessionExpired):
		return stepDone, c.skip(ReasonSessionLost, err)
	case errors.Is(err, context.DeadlineExceeded):
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.CommandTimeout)
		holder, _ := a.board.LockHolder(hctx)
		cancel()
		return stepDone, c.skip(ReasonLockTimeout, fmt.Errorf("lock not free within %v (held by %s)", a.cfg.LockTimeout, holder))
	default:
		return stepDone, c.unavailable(ctx, err)
	}
	c.turn.released = false
	defer func() {
		if !c.turn.released {
			c.release(ctx, sess, m)
		}
	}()
	c.log.Debug("lock taken", "lock_wait_seconds", waited.Seconds())
	_ = c.announce(ctx, coord.StateLocked)
	return c.underLock(ctx, m)
}

// underLock checks everything again on fresh reads and defragments. It
// returns stepLeaderWait when the leader's wait must come first.
func (c *cycle) underLock(ctx context.Context, m *lock.Mutex) (step, error) {
	a := c.a
	if err := c.settleInflight(ctx, m); err != nil {
		return stepDone, err
	}
	st, err := a.localStatus(ctx)
	if err != nil {
		return stepDone, c.unavailable(ctx, err)
	}
	c.observe(st)
	if st.IsLearner {
		return stepDone, c.skip(ReasonLearner, nil)
	}
	if c.members, err = a.memberList(ctx); err != nil {
		return stepDone, c.unavailable(ctx, err)
	}
	if st.isLeader() {
		active, err := c.activeFollowers(ctx)
		if err != nil {
			return stepDone, c.unavailable(ctx, err)
		}
		if !c.turn.waited || len(active) > 0 {
			c.log.Info("member leads now or followers asked meanwhile: letting followers go first",
				"followers_pending", active)
			if !c.turn.askedAsLeader {
				if err := c.announce(ctx, coord.StatePending); err != nil {
					return stepDone, c.unavailable(ctx, err)
				}
			}
			c.turn.waited = false
			return stepLeaderWait, nil
		}
	} else {
		ahead, _, err := c.needierFollowers(ctx)
		if err != nil {
			return stepDone, c.unavailable(ctx, err)
		}
		if len(ahead) > 0 {
			c.log.Info("followers nearer their quota asked too: letting them go first", "followers_ahead", ahead)
			return stepYield, nil
		}
	}
	if ok, err := c.decide(ctx); !ok {
		return stepDone, err
	}
	if err := c.healthGate(ctx); err != nil {
		return stepDone, err
	}
	if st.isLeader() && a.cfg.MoveLeader {
		c.moveLeader(ctx)
	}
	if a.cfg.Compaction {
		c.compact(ctx, st.Revision)
	}
	return stepDone, c.defragment(ctx, m)
}

// release gives the lock up. An unlock can fail on one connection (a member
// that stopped answering) and succeed on the next, so it is retried until
// lock.CleanupTimeout. If it still fails, the session is abandoned: its
// keep-alives stop, so the lease — and the lock key bound to it — expires
// within one --lock-ttl instead of being kept alive, and held, for as long
// as the agent runs. The next cycle starts a new session.
func (c *cycle) release(ctx context.Context, sess *lock.Session, m *lock.Mutex) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lock.CleanupTimeout)
	defer cancel()
	retry := time.NewTicker(unlockRetryInterval)
	defer retry.Stop()
	for {
		err := m.Unlock(uctx)
		if err == nil {
			return
		}
		select {
		case <-retry.C:
			c.log.Debug("unlock failed; retrying", "err", err)
			continue
		case <-uctx.Done():
		}
		c.a.presence.drop(sess)
		c.log.Warn("unlock failed; session abandoned, the lock is released when its lease expires",
			"err", err, "lease", fmt.Sprintf("%x", int64(sess.Lease())), "lock_ttl_seconds", sess.TTL().Seconds())
		return
	}
}

// unlockRetryInterval spaces the attempts to release the lock.
const unlockRetryInterval = 250 * time.Millisecond

// The leader's wait.

// leaderPoll bounds each sleep of the leader's wait between re-reads, so
// changes no watch reports (membership, leadership, alarms) are seen too.
const leaderPoll = 2 * time.Second

// errNoSpaceRaised ends a turn's wait when the cluster enters NOSPACE.
var errNoSpaceRaised = errors.New("NOSPACE alarm raised while waiting for the turn")

// waitFollowers is the leader's wait: it returns once every voting follower
// member has had its say. A follower is done when one of its agents has
// announced a decision after this agent's pending announcement and none of
// its agents is in a turn (pending, locked, defragmenting), or — with no
// agent running — when it was defragmented after this cycle began. Follower
// agents that run as daemons evaluate their rule as soon as they see the
// leader's announcement, so all of this takes as long as their turns.
//
// A follower member without any agent, or whose agents ended a cycle since
// the leader asked but were held back (see undecided), is waited for one
// lock TTL (an agent started at the same moment has announced itself by
// then), then the leader goes on. A follower whose agent is present but not
// done is waited for until LeaderWaitTimeout; then the cycle gives up
// (leader_wait_timeout). The wait also ends when this member no longer
// leads, and with errNoSpaceRaised when the cluster enters NOSPACE.
func (c *cycle) waitFollowers(ctx context.Context) error {
	a := c.a
	if !c.turn.askedAsLeader {
		// The pending announcement must say "leader" for followers to react.
		if err := c.announce(ctx, coord.StatePending); err != nil {
			return c.unavailable(ctx, err)
		}
	}
	start := a.now()
	if c.turn.deadline.IsZero() {
		// The first wait began when the announcement was sent.
		start = minTime(start, c.turn.askedAt)
		c.turn.deadline = start.Add(a.cfg.LeaderWaitTimeout)
	}
	a.metrics.waiting.WithLabelValues(waitLeader).Set(1)
	defer func() {
		a.metrics.waiting.WithLabelValues(waitLeader).Set(0)
		d := a.now().Sub(start)
		a.metrics.leaderWait.Observe(d.Seconds())
		c.rep.LeaderWaitSeconds += d.Seconds()
	}()
	logged := false
	for {
		waiting, absent, rev, err := c.followers(ctx)
		if err != nil {
			return c.unavailable(ctx, err)
		}
		now := a.now()
		switch leaderWaitVerdict(len(waiting), len(absent), now, c.turn.askedAt, c.turn.deadline, a.cfg.LockTTL) {
		case waitDone:
			c.turn.waited = true
			return nil
		case waitGoOn:
			c.log.Info("leader goes on: no agent runs beside these followers, or it was held back", "followers", absent)
			c.turn.waited = true
			return nil
		case waitTimedOut:
			return c.skip(ReasonLeaderWait, fmt.Errorf("followers not done after %v: %v (no agent: %v)",
				a.cfg.LeaderWaitTimeout, waiting, absent))
		}
		if !logged {
			c.log.Info("leader waits for followers", "followers_waiting", waiting, "followers_without_agent", absent)
			logged = true
		}
		if err := c.awaitChange(ctx, rev, "the leader's wait"); err != nil {
			return err
		}
		if !c.st.isLeader() {
			c.log.Info("member no longer leads: going as a follower")
			c.turn.waited = true
			return nil
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// waitVerdict is where the leader's wait stands.
type waitVerdict int

const (
	waitOn       waitVerdict = iota // keep waiting
	waitDone                        // every follower had its say
	waitGoOn                        // only followers without an agent (or held back) are left, and one lock TTL has passed
	waitTimedOut                    // LeaderWaitTimeout passed with followers still in a turn or deciding
)

// leaderWaitVerdict decides the leader's wait from the followers still to
// wait for (waiting: their agent is in a turn or has not decided; absent:
// no agent, or held back), the clock, when the leader asked, the wait's
// deadline, and the lock TTL.
func leaderWaitVerdict(waiting, absent int, now, askedAt, deadline time.Time, ttl time.Duration) waitVerdict {
	switch {
	case waiting == 0 && absent == 0:
		return waitDone
	case waiting == 0 && (now.Sub(askedAt) >= ttl || !now.Before(deadline)):
		return waitGoOn
	case !now.Before(deadline):
		return waitTimedOut
	}
	return waitOn
}

// followerState is what the leader's agent knows of one follower member.
type followerState int

const (
	followerResolved  followerState = iota // decided after the leader asked, and is not in a turn
	followerWaiting                        // its agent is in a turn, or has not decided since the leader asked
	followerNoAgent                        // no agent announces itself for the member
	followerUndecided                      // its agents ended a cycle since the leader asked, held back (see undecided)
)

// undecided reports whether a cycle that ended with r left its member's
// need open: a defrag was wanted, or could not be ruled out, and something
// held it back (the member or etcd did not answer, another member was
// unhealthy or catching up, the session ended...). Such a follower may
// well try again a moment later — a member that just came back makes the
// others refuse until it has caught up — so the leader's agent waits for it
// one lock TTL, as for a follower without an agent, instead of counting the
// refusal as its say.
func undecided(r string) bool {
	switch Reason(r) {
	case "": // defragmented
		return false
	case ReasonShutdown:
		return true
	}
	return Reason(r).Blocked()
}

// followers sorts the voting follower members into those still to wait for
// and those without an agent, as of revision rev.
func (c *cycle) followers(ctx context.Context) (waiting, absent []string, rev int64, err error) {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	if c.members, err = a.memberList(ctx); err != nil {
		return nil, nil, 0, err
	}
	anns, rev, err := a.board.Announcements(ctx)
	if err != nil {
		return nil, nil, 0, err
	}
	for _, m := range without(voters(c.members), c.st.ID) {
		mine := slices.DeleteFunc(slices.Clone(anns), func(x coord.Announcement) bool { return x.Member != m.ID })
		var settled bool
		if len(mine) == 0 {
			rec, found, err := a.board.Last(ctx, m.ID)
			if err != nil {
				return nil, nil, 0, err
			}
			settled = found && followerSettled(rec.Value, c.rep.Start, a.now(), a.cfg.Cooldown)
		}
		switch classifyFollower(mine, c.turn.askedRev, settled) {
		case followerWaiting:
			waiting = append(waiting, memberName(m))
		case followerNoAgent:
			absent = append(absent, memberName(m))
		case followerUndecided:
			absent = append(absent, memberName(m)+": its agent was held back")
		}
	}
	return waiting, absent, rev, nil
}

// followerSettled reports whether a follower whose last defrag attempt is
// last needs no turn before the leader's: the attempt ended after the
// leader's cycle began, or so recently that its agent, in its cooldown,
// would not ask for one (an agent that defragmented its member and exited
// before the leader's agent started: make bench saw the leader wait one
// --lock-ttl for it).
func followerSettled(last coord.Last, cycleStart, now time.Time, cooldown time.Duration) bool {
	return !last.End.Before(cycleStart) || inCooldown(&last, now, cooldown)
}

// classifyFollower classifies one follower member from its agents'
// announcements (mine), the revision of the leader's request, and — when no
// agent announces itself — whether its last defrag attempt settles it
// (followerSettled).
func classifyFollower(mine []coord.Announcement, askedRev int64, settled bool) followerState {
	if len(mine) == 0 {
		if settled {
			return followerResolved
		}
		return followerNoAgent
	}
	decided, unsure := false, false
	for _, x := range mine {
		if x.State.Active() {
			return followerWaiting
		}
		if x.Revision > askedRev {
			if undecided(x.Reason) {
				unsure = true
			} else {
				decided = true
			}
		}
	}
	switch {
	case decided:
		return followerResolved
	case unsure:
		return followerUndecided
	}
	return followerWaiting
}

// activeFollowers names the voting follower members with an agent in a turn
// now.
func (c *cycle) activeFollowers(ctx context.Context) ([]string, error) {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	anns, _, err := a.board.Announcements(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, x := range anns {
		if x.Member != c.st.ID && x.State.Active() && findMember(voters(c.members), x.Member) != nil {
			out = append(out, fmt.Sprintf("%x", x.Member))
		}
	}
	return out, nil
}

// Neediest first. Followers that ask for a turn at the same time go in the
// order of their need, the fullest first: the member nearest its quota is
// the one whose alarm would stall the whole cluster. The members hold the
// same data, so the fullest file is also the one with the most to reclaim;
// the two orders differ only when the quotas differ (a rolling change of
// --quota-backend-bytes), and then the quota decides. The lock stays a
// FIFO queue: the follower that takes it first checks, under it, whether a
// needier follower waits, and if so gives the lock up and waits for it.

// need is how much a member needs a defrag: its file's share of its quota,
// then its reclaimable bytes, then (for a strict order) the lower member ID.
type need struct {
	usage float64
	free  int64
	id    uint64
}

// more reports whether n comes before o.
func (n need) more(o need) bool {
	switch {
	case n.usage != o.usage:
		return n.usage > o.usage
	case n.free != o.free:
		return n.free > o.free
	}
	return n.id < o.id
}

// needier names, from the agents' announcements, the followers in a turn
// (pending, locked, defragmenting) that need a defrag more than mine. A
// leader's agent is never ahead: the leader goes last.
func needier(anns []coord.Announcement, mine need) []string {
	var out []string
	for _, x := range anns {
		if x.Member == mine.id || x.Leader || !x.State.Active() || x.State == coord.StateRecovering {
			continue
		}
		if (need{usage: x.DBQuotaUsage, free: x.DBSizeFree, id: x.Member}).more(mine) {
			out = append(out, fmt.Sprintf("%x", x.Member))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// needierFollowers reads the announcements and names the followers ahead of
// this member (needier), by what this agent announced of it.
func (c *cycle) needierFollowers(ctx context.Context) ([]string, int64, error) {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	anns, rev, err := a.board.Announcements(ctx)
	if err != nil {
		return nil, 0, err
	}
	return needier(anns, c.turn.need), rev, nil
}

// waitNeedier is a follower's wait for the followers ahead of it: it
// returns once none of them is in a turn any more, and gives up at the
// turn's deadline (--leader-wait-timeout from the first wait). The time
// counts as lock wait: the follower would have waited for the lock anyway.
func (c *cycle) waitNeedier(ctx context.Context) error {
	a := c.a
	start := a.now()
	if c.turn.deadline.IsZero() {
		c.turn.deadline = start.Add(a.cfg.LeaderWaitTimeout)
	}
	a.metrics.waiting.WithLabelValues(waitLock).Set(1)
	defer func() {
		a.metrics.waiting.WithLabelValues(waitLock).Set(0)
		c.rep.LockWaitSeconds += a.now().Sub(start).Seconds()
	}()
	for {
		ahead, rev, err := c.needierFollowers(ctx)
		switch {
		case err != nil:
			return c.unavailable(ctx, err)
		case len(ahead) == 0:
			return nil
		case !a.now().Before(c.turn.deadline):
			return c.skip(ReasonLeaderWait, fmt.Errorf("followers nearer their quota still in a turn after %v: %v", a.cfg.LeaderWaitTimeout, ahead))
		}
		if err := c.awaitChange(ctx, rev, "the wait for needier followers"); err != nil {
			return err
		}
	}
}

// awaitChange is one pause of a turn's waits (the leader's for the
// followers, a follower's for needier ones): until the agents' keys change
// after rev, leaderPoll passes or the turn's deadline comes; then a fresh
// Status of the member. It ends the wait with errNoSpaceRaised when the
// cluster has entered NOSPACE: no announcement can change any more, and
// this agent may be the one to recover (make bench P5 saw a follower wait
// for a needier one while it was itself first in the NOSPACE queue).
func (c *cycle) awaitChange(ctx context.Context, rev int64, what string) error {
	a := c.a
	wctx, cancel := context.WithTimeout(ctx, min(c.turn.deadline.Sub(a.now()), leaderPoll))
	err := a.board.WaitChange(wctx, rev)
	cancel()
	if ctx.Err() != nil {
		return c.skip(ReasonShutdown, ctx.Err())
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		c.log.Debug("watch during a wait for the turn failed; polling", "wait", what, "err", err)
	}
	st, err := a.localStatus(ctx)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	c.observe(st)
	if nospace, _ := st.alarms(); len(nospace) > 0 {
		return errNoSpaceRaised
	}
	return nil
}
