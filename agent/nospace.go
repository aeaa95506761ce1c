package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// Under the NOSPACE alarm etcd refuses puts and lease grants, so no agent
// can take the lock. Instead, every agent joins a second queue (nospace/) in
// advance, while the cluster is writable; taking one's turn in it needs no
// write. The agent at its head acts alone: it waits until no agent holds
// the regular lock, compacts (keeping --compaction-retention revisions) so
// there is history to drop, defragments every voting member above
// --disalarm-threshold of its quota one at a time — followers first, the
// leader last, each only when every other voting member answers a
// linearizable read and the member itself is not busy — and disarms the
// alarm once every member is below the threshold.
//
// If no agent is queued (all of them started after the alarm was raised),
// the agent of the current leader acts, re-checking before each defrag.

// recovery is one agent's NOSPACE recovery.
type recovery struct {
	c *cycle
	// queue is this agent's place at the head of the NOSPACE queue; nil when
	// it acts as the leader's agent because nobody queued.
	queue *lock.Mutex
}

// recoverNoSpace brings a cluster under the NOSPACE alarm back to writable,
// or says why another agent does.
func (c *cycle) recoverNoSpace(ctx context.Context) error {
	a := c.a
	r := &recovery{c: c}
	why, err := r.turn(ctx)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	if why != "" {
		c.log.Info("NOSPACE alarm raised; another agent recovers", "why", why)
		return c.skip(ReasonNoSpaceElsewhere, errors.New(why))
	}
	if a.cfg.DryRun {
		c.rep.DryRun = true
		c.log.Warn("dry run: NOSPACE alarm raised; would compact, defragment the members over the threshold and disarm")
		return c.skip(ReasonDryRun, nil)
	}
	if r.queue != nil {
		defer r.leaveQueue(ctx)
	}
	// Another agent may have recovered the cluster since the alarms were
	// read; with the turn in hand, read them again.
	alarms, err := r.alarms(ctx)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	if len(alarms) == 0 {
		return c.skip(ReasonNoSpaceElsewhere, errors.New("NOSPACE was disarmed meanwhile"))
	}
	c.log.Warn("NOSPACE alarm raised; this agent recovers the cluster", "queued", r.queue != nil)
	if err := r.run(ctx, alarms); err != nil {
		a.metrics.nospaceRecoveries.WithLabelValues(resultError).Inc()
		return err
	}
	a.metrics.nospaceRecoveries.WithLabelValues(resultSuccess).Inc()
	return nil
}

// turn decides whether this agent acts under NOSPACE; if not, why.
func (r *recovery) turn(ctx context.Context) (why string, err error) {
	a := r.c.a
	sess, q := a.presence.noSpaceQueue()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	head, err := a.board.NoSpaceHead(ctx)
	if err != nil {
		return "", err
	}
	mine := sess != nil && !sess.Expired() && q != nil && head == q.Key()
	if mine {
		if err := q.Wait(ctx); err != nil { // at the head: returns at once, writes nothing
			return "", err
		}
		r.queue = q
	}
	return noSpaceActor(mine, head, r.c.st.isLeader()), nil
}

// noSpaceActor says why this agent does not act under NOSPACE, or "" when
// it does: it heads the queue, or nobody is queued and its member leads.
func noSpaceActor(headsQueue bool, head string, leads bool) string {
	switch {
	case headsQueue:
		return ""
	case head != "":
		return fmt.Sprintf("the agent first in the NOSPACE queue (%s) recovers", head)
	case !leads:
		return "no agent is queued for NOSPACE; the leader's agent recovers"
	}
	return ""
}

// leaveQueue takes the agent out of the NOSPACE queue after its turn; it
// joins again, at the back, once the cluster is writable.
func (r *recovery) leaveQueue(ctx context.Context) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lock.CleanupTimeout)
	defer cancel()
	if err := r.queue.Unlock(uctx); err != nil {
		r.c.log.Warn("leaving the NOSPACE queue failed", "err", err)
	}
	r.c.a.presence.dequeued(r.queue)
}

// stillMine re-checks, right before each defrag, that this agent still
// acts: it heads the queue, or — as the leader's agent — nobody is queued
// and its member still leads.
func (r *recovery) stillMine(ctx context.Context) error {
	a := r.c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	head, err := a.board.NoSpaceHead(ctx)
	if err != nil {
		return err
	}
	switch {
	case r.queue != nil && head != r.queue.Key():
		return fmt.Errorf("lost the head of the NOSPACE queue to %q", head)
	case r.queue != nil:
		return nil
	case head != "":
		return fmt.Errorf("an agent joined the NOSPACE queue (%s)", head)
	}
	st, err := a.localStatus(ctx)
	if err != nil {
		return err
	}
	if !st.isLeader() {
		return errors.New("the member no longer leads")
	}
	return nil
}

// alarms reads the NOSPACE alarms from a fresh status of this member.
func (r *recovery) alarms(ctx context.Context) ([]*pb.AlarmMember, error) {
	st, err := r.c.a.localStatus(ctx)
	if err != nil {
		return nil, err
	}
	nospace, _ := st.alarms()
	return nospace, nil
}

// run is the recovery proper.
func (r *recovery) run(ctx context.Context, alarms []*pb.AlarmMember) error {
	c, a := r.c, r.c.a
	if err := r.waitLockFree(ctx); err != nil {
		return err
	}
	// Pass 1 keeps --compaction-retention revisions of history. Under NOSPACE
	// no new revisions come, so data deleted to make room stays within the
	// retention; if a member is still above the threshold, pass 2 compacts to
	// the newest revision (watchers relist) and defragments again.
	var above []string
	for pass := 1; pass <= 2; pass++ {
		st, err := a.localStatus(ctx)
		if err != nil {
			return c.unavailable(ctx, err)
		}
		if pass == 1 {
			c.compact(ctx, st.Revision)
		} else {
			c.log.Warn("NOSPACE: still above the threshold; compacting to the newest revision, so watchers must relist",
				"revision", st.Revision, "members_above", above)
			cctx, cancel := context.WithTimeout(ctx, a.cfg.DefragTimeout)
			err := a.compactTo(cctx, st.Revision)
			cancel()
			if err != nil {
				return c.fail(ReasonUnavailable, err)
			}
		}
		if above, err = r.pass(ctx); err != nil {
			return err
		}
		if len(above) == 0 {
			break
		}
	}
	if len(above) > 0 {
		return c.fail(ReasonNoSpaceStuck, fmt.Errorf("after compaction to the newest revision and defrag, members still at or above %.0f%% of their quota: %v; delete data or raise --quota-backend-bytes",
			a.cfg.DisalarmThreshold*100, above))
	}
	if !a.cfg.AutoDisalarm {
		return c.skip(ReasonNoSpaceStuck, fmt.Errorf("every member is below %.0f%% of its quota, but --auto-disalarm is off: run etcdctl alarm disarm",
			a.cfg.DisalarmThreshold*100))
	}
	if err := r.disarm(ctx, alarms); err != nil {
		return err
	}
	c.rep.Decision = DecisionRecovered
	c.log.Warn("NOSPACE alarm disarmed; the cluster is writable", "defragmented", c.rep.Defragmented)
	return nil
}

// disarm disarms the alarms, and again any a member raised late: every
// member raises its own alarm when it applies the write that crosses its
// quota, so one may arrive after the list was read. Every member is below
// the threshold now.
func (r *recovery) disarm(ctx context.Context, alarms []*pb.AlarmMember) error {
	c, a := r.c, r.c.a
	for round := 0; len(alarms) > 0; round++ {
		if round == 5 {
			return c.fail(ReasonUnavailable, fmt.Errorf("NOSPACE raised again after %d disarms: %v", round, alarms))
		}
		for _, am := range alarms {
			dctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
			_, err := a.local.AlarmDisarm(dctx, &clientv3.AlarmMember{MemberID: am.MemberID, Alarm: am.Alarm})
			cancel()
			if err != nil {
				return c.fail(ReasonUnavailable, fmt.Errorf("disarm NOSPACE of member %x: %w", am.MemberID, err))
			}
		}
		var err error
		if alarms, err = r.alarms(ctx); err != nil {
			return c.unavailable(ctx, err)
		}
	}
	return nil
}

// pass defragments, one at a time, every voting member at or above the
// threshold, and returns those still above it afterwards.
func (r *recovery) pass(ctx context.Context) ([]string, error) {
	c := r.c
	done := map[uint64]bool{}
	for {
		target, above, err := r.target(ctx, done)
		if err != nil {
			return nil, c.unavailable(ctx, err)
		}
		if target == nil {
			return above, nil
		}
		if err := r.defragment(ctx, target); err != nil {
			return nil, err
		}
		done[target.ID] = true
		c.rep.Defragmented = append(c.rep.Defragmented, memberName(target))
	}
}

// waitLockFree waits until no agent holds or waits for the regular lock, so a
// defrag started under it cannot overlap the recovery. Agents in that queue
// see NOSPACE at their health gate and leave; new ones cannot join (joining is
// a write).
func (r *recovery) waitLockFree(ctx context.Context) error {
	c, a := r.c, r.c.a
	a.metrics.waiting.WithLabelValues(waitNoSpace).Set(1)
	defer a.metrics.waiting.WithLabelValues(waitNoSpace).Set(0)
	lctx, cancel := context.WithTimeout(ctx, a.cfg.LockTimeout)
	defer cancel()
	for {
		taken, rev, err := a.board.LockTaken(lctx)
		if err == nil && !taken {
			return nil
		}
		if err == nil {
			wctx, wcancel := context.WithTimeout(lctx, leaderPoll)
			_ = a.board.WaitLockChange(wctx, rev) // a failed watch only means polling again
			wcancel()
			err = lctx.Err()
		}
		switch {
		case err == nil:
		case errors.Is(lctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
			return c.skip(ReasonLockTimeout, fmt.Errorf("the regular lock stayed taken for %v under NOSPACE: %w", a.cfg.LockTimeout, err))
		default:
			return c.unavailable(ctx, err)
		}
	}
}

// memberSize is a voting member's file against its quota.
type memberSize struct {
	m      *pb.Member
	st     memberStatus
	leader bool
}

// target picks the next member to defragment (nil when none is left), and
// the members still above the threshold.
func (r *recovery) target(ctx context.Context, done map[uint64]bool) (*pb.Member, []string, error) {
	c, a := r.c, r.c.a
	members, err := a.memberList(ctx)
	if err != nil {
		return nil, nil, err
	}
	c.members = members
	var sizes []memberSize
	for _, m := range voters(members) {
		st, err := a.statusOfAny(ctx, m.ClientURLs)
		if err != nil {
			return nil, nil, err
		}
		sizes = append(sizes, memberSize{m: m, st: st, leader: st.isLeader()})
	}
	t, above := noSpaceTarget(sizes, done, a.cfg.DisalarmThreshold)
	return t, above, nil
}

// noSpaceTarget picks, among the voting members at or above threshold of
// their quota not done yet, the follower with the lowest ID, else the
// leader; and names every member at or above the threshold.
func noSpaceTarget(sizes []memberSize, done map[uint64]bool, threshold float64) (*pb.Member, []string) {
	var (
		followers []*pb.Member
		leader    *pb.Member
		above     []string
	)
	for _, s := range sizes {
		if float64(s.st.DBSize) < threshold*float64(s.st.Quota) {
			continue
		}
		above = append(above, fmt.Sprintf("%s %d/%d bytes", memberName(s.m), s.st.DBSize, s.st.Quota))
		switch {
		case done[s.m.ID]:
		case s.leader:
			leader = s.m
		default:
			followers = append(followers, s.m)
		}
	}
	slices.SortFunc(followers, func(x, y *pb.Member) int {
		switch {
		case x.ID < y.ID:
			return -1
		case x.ID > y.ID:
			return 1
		}
		return 0
	})
	if len(followers) > 0 {
		return followers[0], above
	}
	return leader, above
}

// defragment defragments one member under NOSPACE, after the same checks
// as a turn: quorum, every other voting member answers a linearizable read,
// the target itself answers (is not busy), and this agent still acts.
func (r *recovery) defragment(ctx context.Context, target *pb.Member) error {
	c, a := r.c, r.c.a
	vs := voters(c.members)
	if len(vs) < 3 && !a.cfg.AllowQuorumLoss {
		return c.skip(ReasonQuorum, fmt.Errorf("%d voting member(s) and no --allow-quorum-loss", len(vs)))
	}
	if err := a.reachable(ctx, without(vs, target.ID), probeLinearizable); err != nil {
		return c.skip(ReasonUnhealthy, err)
	}
	if err := a.reachable(ctx, []*pb.Member{target}, probeSerializable); err != nil {
		return c.skip(ReasonMemberBusy, err)
	}
	if err := r.stillMine(ctx); err != nil {
		return c.skip(ReasonNoSpaceElsewhere, err)
	}
	st, err := a.statusOfAny(ctx, target.ClientURLs)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	cli, err := a.peerClient(target)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	r.overrideGuards(ctx, target, st)
	c.log.Warn("NOSPACE: defragmenting", "target", memberName(target), "endpoint", st.Endpoint,
		"db_size_bytes", st.DBSize, "db_quota_bytes", st.Quota)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.DefragTimeout)
	defer cancel()
	d := a.defragmentAndWait(dctx, st.Endpoint, cli, ctx.Done())
	if target.ID == c.st.ID {
		a.metrics.defragDuration.Observe(d.took.Seconds())
	}
	after, aerr := a.statusOfAny(dctx, target.ClientURLs)
	if reason, err := defragOutcome(d, st.Endpoint, aerr == nil && after.DBSize < st.DBSize, a.cfg.DefragTimeout); reason != "" {
		if reason == ReasonPermission {
			err = fmt.Errorf("%w (the etcd user %q needs the root role)", err, a.cfg.User)
		}
		return c.fail(reason, fmt.Errorf("NOSPACE: %s: %w", memberName(target), err))
	}
	c.log.Warn("NOSPACE: defragmented", "target", memberName(target), "defrag_seconds", d.took.Seconds(),
		"db_size_bytes", after.DBSize)
	return nil
}

// overrideGuards checks the guards for a member the recovery is about to
// defragment, and says loudly when one would refuse: the recovery goes on
// anyway, because refusing keeps the cluster read-only. A defrag killed by
// etcd's liveness probe is aborted safely by etcd (from 3.5.6), and one that
// runs out of disk fails cleanly (etcd removes its copy and keeps the old
// file); neither loses data, and under NOSPACE there are almost no writes
// for etcd's log to need room for. The free disk is known for this agent's
// own member only.
func (r *recovery) overrideGuards(ctx context.Context, target *pb.Member, st memberStatus) {
	c, a := r.c, r.c.a
	recs, _, err := a.board.Lasts(ctx)
	if err != nil {
		c.log.Debug("reading the last-defrag records for the forecast failed", "err", err)
	}
	var own *coord.Last
	if rec, ok := recs[target.ID]; ok {
		own = &rec
	}
	delete(recs, target.ID)
	rate, src := copyRate(own, recs)
	diskFree := int64(-1)
	if target.ID == c.st.ID && a.cfg.DataDir != "" {
		if free, err := a.diskFree(a.cfg.DataDir); err == nil {
			diskFree = free
		}
	}
	g := guards{maxDuration: a.cfg.MaxDefragDuration, dataDir: a.cfg.DataDir, headroom: a.cfg.DiskHeadroom}
	for _, o := range []struct{ guard, why string }{
		{guardProbeBudget, g.probeBudget(st.DBSizeInUse, expectedDuration(st.DBSizeInUse, rate), src)},
		{guardDiskSpace, g.diskSpace(st.DBSizeInUse, diskFree)},
	} {
		if o.why == "" {
			continue
		}
		a.metrics.guardOverrides.WithLabelValues(o.guard).Inc()
		c.rep.Warnings = append(c.rep.Warnings, fmt.Sprintf("NOSPACE recovery overrode %s for %s: %s", o.guard, memberName(target), o.why))
		c.log.Error("NOSPACE: defragmenting although a guard would refuse: the cluster stays read-only otherwise",
			"guard", o.guard, "target", memberName(target), "why", o.why)
	}
}
