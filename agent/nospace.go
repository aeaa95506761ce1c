package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// recoverNoSpace brings a cluster under the NOSPACE alarm back to writable.
// Under NOSPACE etcd refuses puts and lease grants, so no agent can take the
// lock. Instead, every agent joins a second queue (nospace/) in advance,
// while the cluster is writable; taking one's turn in it needs no write. The
// agent at its head acts alone: it waits until no agent holds the regular
// lock, compacts (keeping --compaction-retention revisions) so there is
// history to drop, defragments every voting member above
// --disalarm-threshold of its quota one at a time — followers first, the
// leader last, each only when every other voting member answers a
// linearizable read and the member itself is not busy — and disarms the
// alarm once every member is below the threshold.
//
// If no agent is queued (all of them started after the alarm was raised),
// the agent of the current leader acts, re-checking before each defrag.
func (c *cycle) recoverNoSpace(ctx context.Context) error {
	a := c.a
	queue, why, err := c.noSpaceTurn(ctx)
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
	// Another agent may have recovered the cluster since the alarm list was
	// read; with the turn in hand, read it again.
	alarms, _, err := a.alarms(ctx)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	if len(alarms) == 0 {
		if queue != nil {
			c.leaveNoSpaceQueue(ctx, queue)
		}
		return c.skip(ReasonNoSpaceElsewhere, errors.New("NOSPACE was disarmed meanwhile"))
	}
	c.log.Warn("NOSPACE alarm raised; this agent recovers the cluster", "queued", queue != nil)
	if queue != nil {
		defer c.leaveNoSpaceQueue(ctx, queue)
	}
	err = c.noSpaceRecovery(ctx, queue, alarms)
	if err != nil {
		a.metrics.nospaceRecoveries.WithLabelValues(resultError).Inc()
		return err
	}
	a.metrics.nospaceRecoveries.WithLabelValues(resultSuccess).Inc()
	return nil
}

// leaveNoSpaceQueue takes the agent out of the NOSPACE queue after its turn;
// it joins again, at the back, once the cluster is writable.
func (c *cycle) leaveNoSpaceQueue(ctx context.Context, queue *lock.Mutex) {
	a := c.a
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lock.CleanupTimeout)
	defer cancel()
	if err := queue.Unlock(uctx); err != nil {
		c.log.Warn("leaving the NOSPACE queue failed", "err", err)
	}
	a.mu.Lock()
	if a.nospace == queue {
		a.nospace = nil
	}
	a.mu.Unlock()
}

// noSpaceTurn decides whether this agent acts under NOSPACE. It returns the
// queue it acts through (nil in the leader fallback), or why it does not act.
func (c *cycle) noSpaceTurn(ctx context.Context) (*lock.Mutex, string, error) {
	a := c.a
	a.mu.Lock()
	sess, q := a.session, a.nospace
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	head, err := lock.Holder(ctx, a.clusterClient(), a.keys.NoSpace())
	if err != nil {
		return nil, "", err
	}
	if sess != nil && !sess.Expired() && q != nil && head == q.Key() {
		if err := q.Wait(ctx); err != nil { // at the head: returns at once, writes nothing
			return nil, "", err
		}
		return q, "", nil
	}
	if head != "" {
		return nil, fmt.Sprintf("the agent first in the NOSPACE queue (%s) recovers", head), nil
	}
	if !c.st.isLeader() {
		return nil, "no agent is queued for NOSPACE; the leader's agent recovers", nil
	}
	return nil, "", nil
}

// stillMyTurn re-checks, right before each defrag, that this agent still
// acts: it heads the queue, or — in the leader fallback — nobody is queued and
// its member still leads.
func (c *cycle) stillMyTurn(ctx context.Context, queue *lock.Mutex) error {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	head, err := lock.Holder(ctx, a.clusterClient(), a.keys.NoSpace())
	if err != nil {
		return err
	}
	if queue != nil {
		if head != queue.Key() {
			return fmt.Errorf("lost the head of the NOSPACE queue to %q", head)
		}
		return nil
	}
	if head != "" {
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

func (c *cycle) noSpaceRecovery(ctx context.Context, queue *lock.Mutex, alarms []*pb.AlarmMember) error {
	a := c.a
	if err := c.waitLockFree(ctx); err != nil {
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
		if above, err = c.noSpacePass(ctx, queue); err != nil {
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
	// Every member raises its own alarm when it applies the write that
	// crosses its quota, so one may arrive after the list was read. Every
	// member is below the threshold now: disarm until none is left.
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
		if alarms, _, err = a.alarms(ctx); err != nil {
			return c.unavailable(ctx, err)
		}
	}
	c.rep.Decision = DecisionRecovered
	c.log.Warn("NOSPACE alarm disarmed; the cluster is writable", "defragmented", c.rep.Defragmented)
	return nil
}

// noSpacePass defragments, one at a time, every voting member at or above the
// threshold, and returns those still above it afterwards.
func (c *cycle) noSpacePass(ctx context.Context, queue *lock.Mutex) ([]string, error) {
	done := map[uint64]bool{}
	for {
		target, above, err := c.noSpaceTarget(ctx, done)
		if err != nil {
			return nil, c.unavailable(ctx, err)
		}
		if target == nil {
			return above, nil
		}
		if err := c.noSpaceDefrag(ctx, queue, target); err != nil {
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
func (c *cycle) waitLockFree(ctx context.Context) error {
	a := c.a
	a.metrics.waiting.WithLabelValues(waitNoSpace).Set(1)
	defer a.metrics.waiting.WithLabelValues(waitNoSpace).Set(0)
	ctx, cancel := context.WithTimeout(ctx, a.cfg.LockTimeout)
	defer cancel()
	for {
		resp, err := a.clusterClient().Get(ctx, a.keys.Lock(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return c.waitErr(ctx, err)
		}
		if resp.Count == 0 {
			return nil
		}
		wctx, wcancel := context.WithTimeout(ctx, leaderPoll)
		// A failed watch only means polling again.
		_ = lock.WaitChange(wctx, a.clusterClient(), a.keys.Lock(), resp.Header.Revision)
		wcancel()
		if ctx.Err() != nil {
			return c.waitErr(ctx, ctx.Err())
		}
	}
}

func (c *cycle) waitErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return c.skip(ReasonLockTimeout, fmt.Errorf("the regular lock stayed taken for %v under NOSPACE: %w", c.a.cfg.LockTimeout, err))
	}
	return c.unavailable(ctx, err)
}

// noSpaceTarget picks the next member to defragment: a voting member at or
// above the threshold that was not done yet, followers before the leader. It
// also returns the members still above the threshold.
func (c *cycle) noSpaceTarget(ctx context.Context, done map[uint64]bool) (*pb.Member, []string, error) {
	a := c.a
	members, err := a.memberList(ctx)
	if err != nil {
		return nil, nil, err
	}
	c.members = members
	var (
		followers []*pb.Member
		leader    *pb.Member
		above     []string
	)
	for _, m := range voters(members) {
		st, err := a.statusOfAny(ctx, m.ClientURLs)
		if err != nil {
			return nil, nil, err
		}
		if float64(st.DBSize) < a.cfg.DisalarmThreshold*float64(st.Quota) {
			continue
		}
		above = append(above, fmt.Sprintf("%s %d/%d bytes", memberName(m), st.DBSize, st.Quota))
		if done[m.ID] {
			continue
		}
		if st.isLeader() {
			leader = m
		} else {
			followers = append(followers, m)
		}
	}
	slices.SortFunc(followers, func(x, y *pb.Member) int { return cmpUint(x.ID, y.ID) })
	switch {
	case len(followers) > 0:
		return followers[0], above, nil
	case leader != nil:
		return leader, above, nil
	}
	return nil, above, nil
}

func cmpUint(x, y uint64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// noSpaceDefrag defragments one member under NOSPACE after the gate, and
// waits until it answers again.
func (c *cycle) noSpaceDefrag(ctx context.Context, queue *lock.Mutex, target *pb.Member) error {
	a := c.a
	vs := voters(c.members)
	others := slices.DeleteFunc(slices.Clone(vs), func(m *pb.Member) bool { return m.ID == target.ID })
	if len(vs) < 3 && !a.cfg.AllowQuorumLoss {
		return c.skip(ReasonQuorum, fmt.Errorf("%d voting member(s) and no --allow-quorum-loss", len(vs)))
	}
	if err := a.allAnswer(ctx, others); err != nil {
		return c.skip(ReasonUnhealthy, err)
	}
	cli, err := a.peerClient(target)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	if err := a.answers(ctx, cli, false); err != nil {
		return c.skip(ReasonMemberBusy, fmt.Errorf("member %s does not answer: %w", memberName(target), err))
	}
	if err := c.stillMyTurn(ctx, queue); err != nil {
		return c.skip(ReasonNoSpaceElsewhere, err)
	}
	st, err := a.statusOfAny(ctx, target.ClientURLs)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	c.overrideGuards(ctx, target, st)
	c.log.Warn("NOSPACE: defragmenting", "target", memberName(target), "endpoint", st.Endpoint,
		"db_size_bytes", st.DBSize, "db_quota_bytes", st.Quota)
	start := a.now()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.DefragTimeout)
	defer cancel()
	_, derr := a.local.Defragment(dctx, st.Endpoint)
	werr := a.waitAnswers(dctx, cli)
	took := a.now().Sub(start)
	if target.ID == c.st.ID {
		a.metrics.defragDuration.Observe(took.Seconds())
	}
	switch {
	case werr != nil:
		return c.fail(ReasonMemberBusy, fmt.Errorf("member %s did not answer within --defrag-timeout after its defrag: %w", memberName(target), werr))
	case derr != nil && isPermissionDenied(derr):
		return c.fail(ReasonPermission, fmt.Errorf("defragment %s: %w (the etcd user %q needs the root role)", st.Endpoint, derr, a.cfg.User))
	case derr != nil && !isTimeout(derr):
		return c.fail(ReasonUnavailable, fmt.Errorf("defragment %s: %w", st.Endpoint, derr))
	}
	after, _ := a.statusOfAny(dctx, target.ClientURLs)
	c.log.Warn("NOSPACE: defragmented", "target", memberName(target), "defrag_seconds", took.Seconds(),
		"db_size_bytes", after.DBSize)
	return nil
}

// overrideGuards checks the guards for a member the NOSPACE recovery is
// about to defragment, and says loudly when one would refuse: the recovery
// goes on anyway, because refusing keeps the cluster read-only. A defrag
// killed by etcd's liveness probe is aborted safely by etcd (from 3.5.6),
// and one that runs out of disk fails cleanly (etcd removes its copy and
// keeps the old file); neither loses data, and under NOSPACE there are
// almost no writes for etcd's log to need room for. The free disk is known
// for this agent's own member only.
func (c *cycle) overrideGuards(ctx context.Context, target *pb.Member, st memberStatus) {
	a := c.a
	own, others, err := c.records(ctx)
	if err != nil {
		c.log.Debug("reading the last-defrag records for the forecast failed", "err", err)
	}
	var targetRec *lastRecord
	if target.ID == c.st.ID {
		targetRec = own
	} else {
		for i := range others {
			if others[i].Member == fmt.Sprintf("%x", target.ID) {
				targetRec = &others[i]
			}
		}
		if own != nil {
			others = append(others, *own)
		}
	}
	rate, src := copyRate(targetRec, others)
	diskFree := int64(-1)
	if target.ID == c.st.ID && a.cfg.DataDir != "" {
		if free, err := a.diskFree(a.cfg.DataDir); err == nil {
			diskFree = free
		}
	}
	for _, g := range []struct{ guard, why string }{
		{guardProbeBudget, c.probeBudget(st.DBSizeInUse, expectedDuration(st.DBSizeInUse, rate), src)},
		{guardDiskSpace, c.diskSpace(st.DBSizeInUse, diskFree)},
	} {
		if g.why == "" {
			continue
		}
		a.metrics.guardOverrides.WithLabelValues(g.guard).Inc()
		c.rep.Warnings = append(c.rep.Warnings, fmt.Sprintf("NOSPACE recovery overrode %s for %s: %s", g.guard, memberName(target), g.why))
		c.log.Error("NOSPACE: defragmenting although a guard would refuse: the cluster stays read-only otherwise",
			"guard", g.guard, "target", memberName(target), "why", g.why)
	}
}
