package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// cycle is the state of one run of RunOnce.
type cycle struct {
	a   *Agent
	log *slog.Logger
	rep *Report

	st      memberStatus // this member, latest read
	members []*pb.Member // latest member list

	// What decide found: this member's last-defrag record, the forecast
	// duration of a defrag now, the free bytes of the data directory's
	// filesystem (-1 when not measured), and the plan of the HashKV check.
	last     *coord.Last
	expected time.Duration
	diskFree int64
	check    checkPlan // where the HashKV check after the defrag hashes

	turn turn // the leader's wait and the lock
}

// RunOnce runs one cycle: decide, take a turn, defragment, record, verify.
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
	c := &cycle{a: a, log: a.log, rep: &Report{Start: a.now()}, diskFree: -1}
	err := c.run(ctx)
	if err != nil && ctx.Err() != nil && ReasonOf(err) != ReasonShutdown && c.rep.Decision != DecisionFailed {
		err = c.skip(ReasonShutdown, ctx.Err())
	}
	a.finish(c, err)
	return err
}

// run is the cycle, step by step. Every step that ends it says why, with a
// Reason (skip, fail or unavailable).
func (c *cycle) run(ctx context.Context) error {
	a := c.a

	// 1. This member: its status, the cluster's alarms and members.
	st, err := a.localStatus(ctx)
	if err != nil {
		return c.unavailable(ctx, fmt.Errorf("%w: %w", ErrMemberUnreachable, err))
	}
	c.observe(st)
	c.rep.EtcdVersion, c.rep.Warnings = st.Version, a.checkVersion(st.Version)
	c.log = a.log.With("member_id", fmt.Sprintf("%x", st.ID))
	c.log.Debug("status", "endpoint", st.Endpoint, "leader", fmt.Sprintf("%x", st.Leader),
		"db_size_bytes", st.DBSize, "db_size_in_use_bytes", st.DBSizeInUse, "db_quota_bytes", st.Quota,
		"quota_from_status", st.QuotaReported, "revision", st.Revision, "raft_index", st.RaftIndex,
		"raft_applied_index", st.RaftAppliedIndex, "is_learner", st.IsLearner, "version", st.Version)
	if st.IsLearner {
		return c.skip(ReasonLearner, nil)
	}
	nospace, corrupt := st.alarms()
	if len(corrupt) > 0 {
		return c.skip(ReasonAlarm, fmt.Errorf("CORRUPT alarm raised by member %x: defragmenting would hide the evidence", corrupt[0].MemberID))
	}
	if c.members, err = a.memberList(ctx); err != nil {
		return c.unavailable(ctx, err)
	}
	if err := a.refreshCluster(st.ID, c.members); err != nil {
		return c.unavailable(ctx, err)
	}
	c.keepTrend(ctx)
	if len(nospace) > 0 {
		return c.recoverNoSpace(ctx)
	}

	// 2. Decide: quorum, cooldown, the rule, the guards.
	if n := len(voters(c.members)); n < 3 && !a.cfg.AllowQuorumLoss {
		return c.skip(ReasonQuorum, fmt.Errorf("%d voting member(s): the others cannot keep quorum while this one defragments; use --allow-quorum-loss to accept that", n))
	}
	if ok, err := c.decide(ctx); !ok {
		return err
	}
	if a.cfg.DryRun {
		c.rep.DryRun = true
		c.log.Info("dry run: would defragment", "endpoint", st.Endpoint, "is_leader", st.isLeader())
		return c.skip(ReasonDryRun, nil)
	}

	// 3. Can the agent use a turn: the root role, every voter up.
	if err := c.checkRoot(ctx); err != nil {
		return err
	}
	if err := c.votersUp(ctx); err != nil {
		return err
	}

	// 4. Ask for a turn, and take it: the leader's wait, the lock, the
	// checks under it and the defrag (turn.go).
	if _, err := a.ensureSession(ctx, st); err != nil {
		return c.unavailable(ctx, err)
	}
	if err := c.announce(ctx, coord.StatePending); err != nil {
		return c.unavailable(ctx, err)
	}
	err = c.takeTurn(ctx)
	if errors.Is(err, errNoSpaceRaised) {
		c.log.Warn("NOSPACE alarm raised while waiting for the turn; recovering")
		return c.recoverNoSpace(ctx)
	}
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

// observe takes a status read as the member's latest: the report and the
// gauges.
func (c *cycle) observe(st memberStatus) {
	c.st = st
	c.rep.Member = fmt.Sprintf("%x", st.ID)
	c.rep.Endpoint = st.Endpoint
	c.rep.Leader = st.isLeader()
	c.rep.Before = st.sizes()
	m := c.a.metrics
	m.isLeader.Set(boolGauge(st.isLeader()))
	m.dbSize.Set(float64(st.DBSize))
	m.dbSizeInUse.Set(float64(st.DBSizeInUse))
	m.dbQuota.Set(float64(st.Quota))
	a := c.a
	a.trend.add(coord.TrendSample{Time: a.now(), DBSize: st.DBSize, DBSizeInUse: st.DBSizeInUse, RaftIndex: st.RaftIndex})
	r := a.trend.rates()
	m.dbSizeGrowth.Set(r.DBSize)
	m.dbSizeInUseGrowth.Set(r.DBSizeInUse)
	m.secondsToQuota.Set(rule.SecondsToQuota(st.DBSize, st.Quota, r.DBSize))
	m.writesPerSecond.Set(math.NaN())
	if r.WritesPerSecond >= 0 {
		m.writesPerSecond.Set(r.WritesPerSecond)
	}
}

// announce tells the other agents what this one does now: pending, locked,
// defragmenting. A pending announcement starts (again) the leader's wait
// for the followers' decisions.
func (c *cycle) announce(ctx context.Context, s coord.State) error {
	a := c.a
	sess := a.presence.session()
	if sess == nil {
		return errSessionGone
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	sent := a.now()
	if s == coord.StatePending {
		// The turn's need, from the status it was asked on: every later
		// announcement of the turn carries the same, and the neediest-first
		// order compares announced needs only, so two followers never both
		// see the other as needier.
		c.turn.need = c.st.need()
	}
	rev, err := a.board.Announce(ctx, sess, c.st.ID, a.signed(c.announcement(s), sent))
	if err != nil {
		return err
	}
	if s == coord.StatePending {
		// The put may have waited for a member that defragments; the
		// followers could see it from the moment it was sent.
		c.turn.asked(rev, c.st.isLeader(), sent)
	}
	return nil
}

// announcement is what the cycle announces in state s: the member's role,
// the cycle's reason and the turn's need.
func (c *cycle) announcement(s coord.State) coord.Announcement {
	n := c.turn.need
	return coord.Announcement{
		State: s, Leader: c.st.isLeader(), Reason: string(c.rep.Reason),
		DBQuotaUsage: n.usage, DBSizeFree: n.free,
	}
}

// errSessionGone is a cycle's step that needs the agent's session when an
// earlier step of the cycle abandoned it (a failed unlock).
var errSessionGone = errors.New("the agent's session was abandoned earlier in this cycle")

// finish records the cycle: report, metrics, the one log event, and the
// agent's idle announcement.
func (a *Agent) finish(c *cycle, err error) {
	rep := c.rep
	rep.End = a.now()
	if rep.Decision == "" {
		rep.Decision = DecisionSkipped
	}
	a.metrics.cycles.Inc()
	a.metrics.lastCycle.Set(float64(rep.End.UnixNano()) / 1e9)
	if rep.Decision == DecisionSkipped {
		a.metrics.skips.WithLabelValues(string(rep.Reason)).Inc()
	}
	a.mu.Lock()
	prev := a.last
	a.last = *rep
	a.mu.Unlock()
	if sess := a.presence.session(); sess != nil && !sess.Expired() && c.st.ID != 0 {
		a.announceIdle(sess, c.st, rep)
	}
	// One event per decision. A cycle with nothing to do that repeats the
	// previous one is logged at debug level, so a quiet cluster stays quiet.
	a.log.LogAttrs(context.Background(), a.logLevel(prev, *rep, err), "cycle", rep.LogValue().Group()...)
}
