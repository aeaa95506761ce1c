package agent

import (
	"context"
	"fmt"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// ensureSession makes sure the agent has a live session on the cluster
// client, announces itself, and — for a voting member — joins the NOSPACE
// queue while the cluster is still writable.
func (a *Agent) ensureSession(ctx context.Context, st memberStatus) error {
	a.mu.Lock()
	sess, cluster := a.session, a.cluster
	a.mu.Unlock()
	if sess != nil && !sess.Expired() {
		a.joinNoSpaceQueue(ctx, st)
		return nil
	}
	if sess != nil {
		a.log.Warn("session lease lost; starting a new session", "lease", fmt.Sprintf("%x", int64(sess.Lease())))
		sess.Abandon()
	}
	gctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	sess, err := lock.NewSession(gctx, cluster, a.cfg.LockTTL)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	a.mu.Lock()
	a.session, a.nospace = sess, nil
	a.mu.Unlock()
	if _, err := lock.Announce(gctx, sess, a.keys, st.ID, lock.Announcement{
		State: lock.StateStarting, Leader: st.isLeader(), Agent: a.cfg.Identity, Version: a.cfg.Version, Time: a.now(),
	}); err != nil {
		return err
	}
	a.log.Info("session started", "lease", fmt.Sprintf("%x", int64(sess.Lease())), "ttl_seconds", a.cfg.LockTTL.Seconds())
	a.joinNoSpaceQueue(ctx, st)
	return nil
}

// dropSession stops the keep-alives of sess, if it is still the agent's
// session, so that its lease and every key bound to it expire within one
// TTL; the next cycle starts a new session.
func (a *Agent) dropSession(sess *lock.Session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.session != sess {
		return
	}
	sess.Abandon()
	a.session, a.nospace = nil, nil
}

// joinNoSpaceQueue puts the agent in the NOSPACE queue if it is not there.
// Joining is a write, so it can only happen while the cluster is writable;
// failures are retried next cycle.
func (a *Agent) joinNoSpaceQueue(ctx context.Context, st memberStatus) {
	if st.IsLearner {
		return
	}
	a.mu.Lock()
	sess, q := a.session, a.nospace
	a.mu.Unlock()
	if sess == nil {
		return
	}
	if q == nil {
		q = lock.NewMutex(sess, a.keys.NoSpace())
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	if _, err := q.Enqueue(ctx); err != nil {
		a.log.Debug("joining the NOSPACE queue failed; retrying next cycle", "err", err)
		return
	}
	a.mu.Lock()
	if a.session == sess {
		a.nospace = q
	}
	a.mu.Unlock()
}

// finish records the cycle: report, metrics, the one log event, and the
// agent's idle announcement (on a fresh bounded context: ctx may have ended).
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
	sess := a.session
	a.mu.Unlock()

	if sess != nil && !sess.Expired() && c.st.ID != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.CommandTimeout)
		_, aerr := lock.Announce(ctx, sess, a.keys, c.st.ID, lock.Announcement{
			State: lock.StateIdle, Leader: c.st.isLeader(), Reason: string(rep.Reason),
			Agent: a.cfg.Identity, Version: a.cfg.Version, Time: rep.End,
		})
		cancel()
		if aerr != nil && !isNoSpace(aerr) {
			a.log.Debug("announcing idle failed", "err", aerr)
		}
	}

	// One event per decision. A cycle with nothing to do that repeats the
	// previous one is logged at debug level, so a quiet cluster stays quiet.
	level := a.logLevel(prev, *rep, err)
	a.log.LogAttrs(context.Background(), level, "cycle", rep.LogValue().Group()...)
}
