package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// maxTurns bounds how often one cycle goes back to the leader's wait because
// leadership moved to its member or a follower asked meanwhile.
const maxTurns = 3

// cycle is the state of one run of RunOnce.
type cycle struct {
	a   *Agent
	log *slog.Logger
	rep *Report

	st      memberStatus // this member, latest read
	members []*pb.Member // latest member list

	released bool          // the lock was released with the turn's record (Mutex.Release)
	expected time.Duration // forecast duration of a defrag of this member now
	diskFree int64         // free bytes of the data directory's filesystem; -1 when not measured

	announcedRev    int64     // revision of this agent's latest pending announcement
	announcedLeader bool      // that announcement said the member leads
	announcedAt     time.Time // when it was written
	leaderDeadline  time.Time // end of the leader's wait, set when it first waits
	waited          bool      // the leader's wait ended after the latest announcement
}

// RunOnce runs one cycle: decide, take a turn, defragment, verify, record.
// It returns nil when the member was defragmented or there was nothing to do,
// and a *BlockedError when a defrag was needed and did not happen or failed.
//
// ctx bounds the cycle, with one exception: once the Defragment request is
// sent the agent waits for the member to answer again (up to DefragTimeout)
// even if ctx ends, and keeps the lock that long, because etcd goes on
// defragmenting when the request is cancelled.
func (a *Agent) RunOnce(ctx context.Context) error {
	a.cycle.Lock()
	defer a.cycle.Unlock()
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return errors.New("agent: closed")
	}
	c := &cycle{a: a, log: a.log, rep: &Report{Start: a.now()}}
	err := c.run(ctx)
	if err != nil && ctx.Err() != nil && ReasonOf(err) != ReasonShutdown && c.rep.Decision != DecisionFailed {
		err = c.skip(ReasonShutdown, ctx.Err())
	}
	a.finish(c, err)
	return err
}

// skip ends the cycle without a defrag. It returns nil for reasons that mean
// there was nothing to do, a *BlockedError otherwise.
func (c *cycle) skip(r Reason, err error) error {
	c.rep.Decision, c.rep.Reason = DecisionSkipped, r
	if err != nil {
		c.rep.Error = err.Error()
	}
	if !r.Blocked() {
		return nil
	}
	return &BlockedError{Reason: r, Err: err}
}

// fail ends the cycle as failed: a defrag, a check or a recovery went wrong.
func (c *cycle) fail(r Reason, err error) error {
	c.rep.Decision, c.rep.Reason, c.rep.Error = DecisionFailed, r, err.Error()
	return &BlockedError{Reason: r, Err: err}
}

// unavailable ends the cycle because etcd did not answer, or because ctx
// ended while it waited.
func (c *cycle) unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return c.skip(ReasonShutdown, err)
	}
	if isPermissionDenied(err) {
		return c.skip(ReasonPermission, fmt.Errorf("%w (the etcd user %q needs the root role)", err, c.a.cfg.User))
	}
	return c.skip(ReasonUnavailable, err)
}

func (c *cycle) run(ctx context.Context) error {
	a := c.a
	st, err := a.localStatus(ctx)
	if err != nil {
		return c.unavailable(ctx, fmt.Errorf("%w: %w", ErrMemberUnreachable, err))
	}
	c.observe(st)
	c.rep.Before = st.sizes()
	c.rep.EtcdVersion, c.rep.Warnings = st.Version, a.checkVersion(st.Version)
	c.log = a.log.With("member_id", fmt.Sprintf("%x", st.ID))
	c.log.Debug("status", "endpoint", st.Endpoint, "leader", fmt.Sprintf("%x", st.Leader),
		"db_size_bytes", st.DBSize, "db_size_in_use_bytes", st.DBSizeInUse, "db_quota_bytes", st.Quota,
		"quota_from_status", st.QuotaReported, "revision", st.Revision, "raft_index", st.RaftIndex,
		"raft_applied_index", st.RaftAppliedIndex, "is_learner", st.IsLearner, "version", st.Version)

	if st.IsLearner {
		return c.skip(ReasonLearner, nil) // learners serve no alarm list either
	}
	nospace, corrupt := a.observeAlarms(st)
	if len(corrupt) > 0 {
		return c.skip(ReasonAlarm, fmt.Errorf("CORRUPT alarm raised by member %x: defragmenting would hide the evidence", corrupt[0].MemberID))
	}
	if c.members, err = a.memberList(ctx); err != nil {
		return c.unavailable(ctx, err)
	}
	if err := a.refreshCluster(st.ID, c.members); err != nil {
		return c.unavailable(ctx, err)
	}
	if len(nospace) > 0 {
		return c.recoverNoSpace(ctx)
	}
	if n := len(voters(c.members)); n < 3 && !a.cfg.AllowQuorumLoss {
		return c.skip(ReasonQuorum, fmt.Errorf("%d voting member(s): the others cannot keep quorum while this one defragments; use --allow-quorum-loss to accept that", n))
	}
	if _, ok, err := c.decide(ctx, st); !ok {
		return err
	}
	if a.cfg.DryRun {
		c.rep.DryRun = true
		c.log.Info("dry run: would defragment", "endpoint", st.Endpoint, "is_leader", st.isLeader())
		return c.skip(ReasonDryRun, nil)
	}
	if err := c.checkRoot(ctx); err != nil {
		if ctx.Err() != nil || !isPermissionDenied(err) {
			return c.unavailable(ctx, err)
		}
		return c.skip(ReasonPermission, err)
	}
	if err := c.votersUp(ctx); err != nil {
		return err
	}
	if _, err := a.ensureSession(ctx, st); err != nil {
		return c.unavailable(ctx, err)
	}
	if err := c.announce(ctx, lock.StatePending); err != nil {
		return c.unavailable(ctx, err)
	}
	err = c.takeTurn(ctx)
	if errors.Is(err, errNoSpaceRaised) {
		c.log.Warn("NOSPACE alarm raised during the leader's wait; recovering")
		return c.recoverNoSpace(ctx)
	}
	return err
}

// votersUp refuses the turn, before the agent queues, while a voting member
// is down: it would not be up at the health gate either, and without this
// the lock changes hands every cycle while it is down and the leader's
// agent, whose followers decide this way, could not report the same reason.
// A member with an in-flight defrag record is left out: it defragments, and
// etcd may not answer its Status until that ends (etcd 3.7 does not while a
// defrag waits for an open read transaction). The gate under the lock
// checks again, with linearizable reads.
func (c *cycle) votersUp(ctx context.Context) error {
	a := c.a
	lctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	resp, err := a.clusterClient().Get(lctx, a.keys.Defrags(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return c.unavailable(ctx, fmt.Errorf("in-flight defrag records: %w", err))
	}
	busy := make(map[uint64]bool)
	for _, kv := range resp.Kvs {
		if id, ok := a.keys.MemberOf(string(kv.Key)); ok {
			busy[id] = true
		}
	}
	vs := slices.DeleteFunc(slices.Clone(voters(c.members)), func(m *pb.Member) bool { return busy[m.ID] })
	if err := a.allUp(ctx, vs); err != nil {
		if ctx.Err() != nil {
			return c.skip(ReasonShutdown, err)
		}
		return c.skip(ReasonUnhealthy, err)
	}
	return nil
}

// observe exports a status read as gauges.
func (c *cycle) observe(st memberStatus) {
	c.st = st
	c.rep.Member = fmt.Sprintf("%x", st.ID)
	c.rep.Endpoint = st.Endpoint
	c.rep.Leader = st.isLeader()
	m := c.a.metrics
	m.isLeader.Set(boolGauge(st.isLeader()))
	m.dbSize.Set(float64(st.DBSize))
	m.dbSizeInUse.Set(float64(st.DBSizeInUse))
	m.dbQuota.Set(float64(st.Quota))
}

// decide reads the last-defrag records, forecasts the defrag, and decides:
// cooldown, the rule, then the guards. ok is true when a defrag is wanted
// and allowed, with this member's record (nil when there is none);
// otherwise the cycle ends, with err (nil for a reason that is not a
// blocked one).
func (c *cycle) decide(ctx context.Context, st memberStatus) (last *lastRecord, ok bool, err error) {
	last, others, err := c.records(ctx)
	if err != nil {
		return nil, false, c.unavailable(ctx, err)
	}
	c.measure(st, last, others)
	if r, cool := c.inCooldown(last); cool {
		return nil, false, c.skip(r, nil)
	}
	if fire, err := c.evaluate(st, last); err != nil {
		return nil, false, c.skip(ReasonRuleError, err)
	} else if !fire {
		return nil, false, c.skip(ReasonRuleFalse, nil)
	}
	if err := c.guard(st); err != nil {
		return nil, false, err
	}
	return last, true, nil
}

// records reads every member's last-defrag record through this agent's
// member: its own (nil when there is none) and the others'.
func (c *cycle) records(ctx context.Context) (*lastRecord, []lastRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, c.a.cfg.CommandTimeout)
	defer cancel()
	recs, bad, err := lock.List[lastRecord](ctx, c.a.local, c.a.keys.Lasts())
	if err != nil {
		return nil, nil, err
	}
	for _, e := range bad {
		c.log.Debug("ignoring an unreadable last-defrag record", "err", e)
	}
	var (
		own    *lastRecord
		others []lastRecord
	)
	for _, r := range recs {
		if id, ok := c.a.keys.MemberOf(r.Key); ok && id == c.st.ID {
			own = &r.Value
		} else {
			others = append(others, r.Value)
		}
	}
	return own, others, nil
}

// measure forecasts the defrag's duration and measures the free space of
// the data directory's filesystem, for the rule, the guards, the gauges and
// the report.
func (c *cycle) measure(st memberStatus, own *lastRecord, others []lastRecord) {
	a := c.a
	rate, src := copyRate(own, others)
	c.expected = expectedDuration(st.DBSizeInUse, rate)
	c.rep.ExpectedDefragSeconds = c.expected.Seconds()
	c.rep.CopyRateSource = string(src)
	a.metrics.expectedDefrag.Set(c.expected.Seconds())
	c.diskFree = -1
	if a.cfg.DataDir == "" {
		return
	}
	free, err := a.diskFree(a.cfg.DataDir)
	if err != nil {
		c.log.Warn("cannot measure the free space of --data-dir", "data_dir", a.cfg.DataDir, "err", err)
		return
	}
	c.diskFree = free
	c.rep.DiskFreeBytes = &free
	a.metrics.diskFree.Set(float64(free))
}

// guard refuses a defrag that the member cannot afford now: one forecast to
// outlast --max-defrag-duration (etcd's liveness probe could kill the member
// mid-defrag), or one whose copy of the database would not fit on the data
// directory's filesystem.
func (c *cycle) guard(st memberStatus) error {
	if why := c.probeBudget(st.DBSizeInUse, c.expected, rateSource(c.rep.CopyRateSource)); why != "" {
		return c.skip(ReasonProbeBudget, errors.New(why))
	}
	if why := c.diskSpace(st.DBSizeInUse, c.diskFree); why != "" {
		return c.skip(ReasonDiskSpace, errors.New(why))
	}
	return nil
}

// probeBudget says why a defrag of inUse bytes forecast to take expected
// (at a copy rate from src) exceeds --max-defrag-duration, or "".
func (c *cycle) probeBudget(inUse int64, expected time.Duration, src rateSource) string {
	budget := c.a.cfg.MaxDefragDuration
	if budget <= 0 || expected <= budget {
		return ""
	}
	return fmt.Sprintf("a defrag of %s in use is forecast to take %v (copy rate from %s), more than --max-defrag-duration %v: etcd's liveness probe could kill the member mid-defrag; "+
		"raise the probe's failureThreshold and --max-defrag-duration with it, or shrink the data in use",
		bytesIEC(inUse), expected.Round(time.Second), rateSourceText(src), budget)
}

// diskSpace says why diskFree bytes on the data directory's filesystem (-1:
// not measured) leave no room for the copy of inUse bytes that a defrag
// writes, or "".
func (c *cycle) diskSpace(inUse, diskFree int64) string {
	if diskFree < 0 {
		return ""
	}
	need := int64(float64(inUse) * (1 + c.a.cfg.DiskHeadroom))
	if diskFree >= need {
		return ""
	}
	return fmt.Sprintf("%s free on the filesystem of --data-dir %s, a defrag needs %s (the %s in use, which etcd copies into a new file next to the database, and --disk-headroom %.0f%%): "+
		"grow the volume or free space on it",
		bytesIEC(diskFree), c.a.cfg.DataDir, bytesIEC(need), bytesIEC(inUse), c.a.cfg.DiskHeadroom*100)
}

func rateSourceText(src rateSource) string {
	switch src {
	case rateOwn:
		return "this member's recorded defrags"
	case rateCluster:
		return "the other members' recorded defrags"
	}
	return fmt.Sprintf("the default of %s/s: no member has a recorded defrag yet", bytesIEC(defaultCopyRate))
}

// bytesIEC formats a byte count for messages: 1.5 GiB, 300.0 MiB, 512 B.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// inCooldown tells whether the last defrag attempt ended less than Cooldown
// ago.
func (c *cycle) inCooldown(last *lastRecord) (Reason, bool) {
	if last == nil || c.a.cfg.Cooldown <= 0 {
		return "", false
	}
	if c.a.now().Sub(last.End) < c.a.cfg.Cooldown {
		return ReasonCooldown, true
	}
	return "", false
}

// evaluate runs the rule on a status read.
func (c *cycle) evaluate(st memberStatus, last *lastRecord) (bool, error) {
	since := time.Duration(-1)
	if last != nil && !last.LastSuccess.IsZero() {
		since = c.a.now().Sub(last.LastSuccess)
	}
	vars := rule.NewVars(rule.Readings{
		DBSize: st.DBSize, DBSizeInUse: st.DBSizeInUse, DBQuota: st.Quota, IsLeader: st.isLeader(),
		Members: len(voters(c.members)), SinceLastDefrag: since,
		ExpectedDefrag: c.expected, DiskFree: c.diskFree,
	})
	fire, err := c.a.cfg.Rule.Eval(vars)
	switch {
	case err != nil:
		c.a.metrics.ruleEvaluations.WithLabelValues(ruleError).Inc()
		return false, fmt.Errorf("evaluate rule %q: %w", c.a.cfg.Rule, err)
	case fire:
		c.a.metrics.ruleEvaluations.WithLabelValues(ruleTrue).Inc()
	default:
		c.a.metrics.ruleEvaluations.WithLabelValues(ruleFalse).Inc()
	}
	c.rep.Rule = &fire
	return fire, nil
}

// checkRoot makes sure, when etcd auth is on, that the agent's user has the
// root role that Defragment, Compact, HashKV and alarm disarm require, before
// the agent queues for a turn it could not use.
func (c *cycle) checkRoot(ctx context.Context) error {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	st, err := a.local.AuthStatus(ctx)
	if err != nil {
		switch {
		case status.Code(err) == codes.Unimplemented:
			return nil // etcd 3.4 has no AuthStatus; Defragment will tell
		case isPermissionDenied(err):
			// etcd 3.6 answers AuthStatus to the root role only.
			return fmt.Errorf("%w: etcd user %q lacks the root role, which Defragment, Compact, HashKV and alarm disarm require (AuthStatus was refused: %w)",
				errPermission, a.cfg.User, err)
		}
		return fmt.Errorf("auth status: %w", err)
	}
	if !st.Enabled || a.cfg.User == "" {
		return nil
	}
	u, err := a.local.UserGet(ctx, a.cfg.User)
	if err != nil {
		return fmt.Errorf("etcd user %q: %w", a.cfg.User, err)
	}
	if !slices.Contains(u.Roles, "root") {
		return fmt.Errorf("%w: etcd user %q lacks the root role, which Defragment, Compact, HashKV and alarm disarm require (its roles: %v)",
			errPermission, a.cfg.User, u.Roles)
	}
	return nil
}

// errPermission marks a missing-role finding as a permission error.
var errPermission = errors.New("permission denied")

// announce tells the other agents what this one does now.
func (c *cycle) announce(ctx context.Context, s lock.State) error {
	a := c.a
	a.mu.Lock()
	sess := a.session
	a.mu.Unlock()
	if sess == nil {
		return lock.ErrSessionExpired
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	sent := a.now()
	rev, err := lock.Announce(ctx, sess, a.keys, c.st.ID, lock.Announcement{
		State: s, Leader: c.st.isLeader(), Reason: string(c.rep.Reason),
		Agent: a.cfg.Identity, Version: a.cfg.Version, Time: sent,
	})
	if err != nil {
		return err
	}
	if s == lock.StatePending {
		// The put may have waited for a member that defragments; the
		// followers could see it from the moment it was sent.
		c.announcedRev, c.announcedLeader, c.announcedAt = rev, c.st.isLeader(), sent
		c.waited = false
	}
	return nil
}

// takeTurn waits for the followers if this member leads, takes the lock and
// does the work under it; it goes back to the leader's wait when leadership
// came to this member meanwhile.
func (c *cycle) takeTurn(ctx context.Context) error {
	for turn := 1; ; turn++ {
		if c.st.isLeader() && !c.waited {
			if err := c.waitFollowers(ctx); err != nil {
				return err
			}
		}
		again, err := c.withLock(ctx)
		if !again {
			return err
		}
		if turn >= maxTurns {
			return c.skip(ReasonLeaderWait, fmt.Errorf("leadership or followers changed %d times while waiting for the turn", turn))
		}
	}
}

// withLock takes the lock, does the work under it and releases it on a fresh
// bounded context. again is true when the leader's wait must run first.
func (c *cycle) withLock(ctx context.Context) (again bool, err error) {
	a := c.a
	a.mu.Lock()
	sess := a.session
	a.mu.Unlock()
	if sess == nil { // abandoned after a failed unlock in an earlier turn
		return false, c.skip(ReasonSessionLost, lock.ErrSessionExpired)
	}
	m := lock.NewMutex(sess, a.keys.Lock())

	start := a.now()
	a.metrics.waiting.WithLabelValues(waitLock).Set(1)
	lctx, cancel := context.WithTimeout(ctx, a.cfg.LockTimeout)
	err = m.Lock(lctx)
	cancel()
	a.metrics.waiting.WithLabelValues(waitLock).Set(0)
	waited := a.now().Sub(start)
	a.metrics.lockWait.Observe(waited.Seconds())
	c.rep.LockWaitSeconds += waited.Seconds()
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return false, c.skip(ReasonShutdown, err)
	case errors.Is(err, lock.ErrSessionExpired):
		return false, c.skip(ReasonSessionLost, err)
	case errors.Is(err, context.DeadlineExceeded):
		holder, _ := lock.Holder(context.WithoutCancel(ctx), sess.Client(), a.keys.Lock())
		return false, c.skip(ReasonLockTimeout, fmt.Errorf("lock not free within %v (held by %s)", a.cfg.LockTimeout, holder))
	default:
		return false, c.unavailable(ctx, err)
	}
	defer func() {
		if !c.released {
			c.release(ctx, sess, m)
		}
	}()
	c.log.Debug("lock taken", "lock_wait_seconds", waited.Seconds())
	_ = c.announce(ctx, lock.StateLocked)
	return c.underLock(ctx, m)
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
		c.a.dropSession(sess)
		c.log.Warn("unlock failed; session abandoned, the lock is released when its lease expires",
			"err", err, "lease", fmt.Sprintf("%x", int64(sess.Lease())), "lock_ttl_seconds", sess.TTL().Seconds())
		return
	}
}

// unlockRetryInterval spaces the attempts to release the lock.
const unlockRetryInterval = 250 * time.Millisecond

// underLock re-checks everything on fresh reads and defragments.
func (c *cycle) underLock(ctx context.Context, m *lock.Mutex) (again bool, err error) {
	a := c.a
	if err := c.settleInflight(ctx, m); err != nil {
		return false, err
	}
	st, err := a.localStatus(ctx)
	if err != nil {
		return false, c.unavailable(ctx, err)
	}
	c.observe(st)
	c.rep.Before = st.sizes()
	if st.IsLearner {
		return false, c.skip(ReasonLearner, nil)
	}
	if c.members, err = a.memberList(ctx); err != nil {
		return false, c.unavailable(ctx, err)
	}
	if st.isLeader() {
		active, err := c.activeFollowers(ctx)
		if err != nil {
			return false, c.unavailable(ctx, err)
		}
		if !c.waited || len(active) > 0 {
			c.log.Info("member leads now or followers asked meanwhile: letting followers go first",
				"followers_pending", active)
			if !c.announcedLeader {
				if err := c.announce(ctx, lock.StatePending); err != nil {
					return false, c.unavailable(ctx, err)
				}
			}
			c.waited = false
			return true, nil
		}
	}
	last, ok, err := c.decide(ctx, st)
	if !ok {
		return false, err
	}
	if err := c.healthGate(ctx); err != nil {
		return false, err
	}
	if st.isLeader() && a.cfg.MoveLeader {
		c.moveLeader(ctx)
	}
	if a.cfg.Compaction {
		c.compact(ctx, st.Revision)
	}
	return false, c.defragment(ctx, m, last)
}

// healthGate checks that the cluster can spare this member now: no alarm,
// every voting member answers a linearizable read (so quorum holds without
// this one, and none is defragmenting), and this member is caught up.
func (c *cycle) healthGate(ctx context.Context) error {
	a := c.a
	nospace, corrupt := a.observeAlarms(c.st)
	if len(corrupt) > 0 {
		return c.skip(ReasonAlarm, fmt.Errorf("CORRUPT alarm raised by member %x", corrupt[0].MemberID))
	}
	if len(nospace) > 0 {
		return c.skip(ReasonAlarm, errors.New("NOSPACE alarm raised meanwhile; the next cycle recovers"))
	}
	vs := voters(c.members)
	if n := len(vs); n < 3 && !a.cfg.AllowQuorumLoss {
		return c.skip(ReasonQuorum, fmt.Errorf("%d voting member(s) and no --allow-quorum-loss", n))
	}
	if findMember(vs, c.st.ID) == nil {
		return c.skip(ReasonLearner, errors.New("member is not a voting member of the list"))
	}
	if err := a.allAnswer(ctx, vs); err != nil {
		if ctx.Err() != nil {
			return c.skip(ReasonShutdown, err)
		}
		return c.skip(ReasonUnhealthy, err)
	}
	if !c.st.isLeader() {
		lm := findMember(vs, c.st.Leader)
		if lm == nil {
			return c.skip(ReasonUnhealthy, fmt.Errorf("leader %x is not a voting member with client URLs", c.st.Leader))
		}
		ls, err := a.statusOfAny(ctx, lm.ClientURLs)
		if err != nil {
			return c.unavailable(ctx, err)
		}
		if ls.RaftIndex > c.st.RaftAppliedIndex+maxRaftLag {
			return c.skip(ReasonNotCaughtUp, fmt.Errorf("applied index %d is %d behind the leader's %d",
				c.st.RaftAppliedIndex, ls.RaftIndex-c.st.RaftAppliedIndex, ls.RaftIndex))
		}
	}
	return nil
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
