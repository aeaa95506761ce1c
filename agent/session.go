package agent

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// ensureSession makes sure the agent has a live session on the cluster
// client, announces itself, and — for a voting member — joins the NOSPACE
// queue while the cluster is still writable. It reports whether it started
// a session that replaces an earlier one (lost, or abandoned).
func (a *Agent) ensureSession(ctx context.Context, st memberStatus) (replaced bool, err error) {
	a.mu.Lock()
	sess, cluster, replaced := a.session, a.cluster, a.sessions > 0
	a.mu.Unlock()
	if sess != nil && !sess.Expired() {
		a.joinNoSpaceQueue(ctx, st)
		return false, nil
	}
	if sess != nil {
		a.log.Warn("session lease lost; starting a new session", "lease", fmt.Sprintf("%x", int64(sess.Lease())))
		sess.Abandon()
	}
	gctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	sess, err = lock.NewSession(gctx, cluster, a.cfg.LockTTL)
	cancel()
	if err != nil {
		return false, fmt.Errorf("session: %w", err)
	}
	a.mu.Lock()
	a.session, a.nospace, a.idle = sess, nil, idleAnnouncement{}
	a.sessions++
	a.mu.Unlock()
	actx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	_, err = lock.Announce(actx, sess, a.keys, st.ID, lock.Announcement{
		State: lock.StateStarting, Leader: st.isLeader(), Agent: a.cfg.Identity, Version: a.cfg.Version, Time: a.now(),
	})
	cancel()
	if err != nil {
		return replaced, err
	}
	a.log.Info("session started", "lease", fmt.Sprintf("%x", int64(sess.Lease())), "ttl_seconds", a.cfg.LockTTL.Seconds())
	a.joinNoSpaceQueue(ctx, st)
	return replaced, nil
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
	a.session, a.nospace, a.idle = nil, nil, idleAnnouncement{}
}

// joinNoSpaceQueue puts the agent in the NOSPACE queue if it is not there.
// Joining is a write, so it can only happen while the cluster is writable;
// failures are retried next cycle. Once queued with its session the agent
// writes nothing more: the key lives as long as the session.
func (a *Agent) joinNoSpaceQueue(ctx context.Context, st memberStatus) {
	if st.IsLearner {
		return
	}
	a.mu.Lock()
	sess, q := a.session, a.nospace
	a.mu.Unlock()
	if sess == nil || q != nil {
		return
	}
	q = lock.NewMutex(sess, a.keys.NoSpace())
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
		a.announceIdle(sess, c.st, rep)
	}

	// One event per decision. A cycle with nothing to do that repeats the
	// previous one is logged at debug level, so a quiet cluster stays quiet.
	level := a.logLevel(prev, *rep, err)
	a.log.LogAttrs(context.Background(), level, "cycle", rep.LogValue().Group()...)
}

// idleAnnouncement is the agent's last idle announcement: what it said, and
// at which revision.
type idleAnnouncement struct {
	lease    clientv3.LeaseID
	leader   bool
	reason   Reason
	revision int64
}

// announceIdle announces the end of a cycle (on a fresh bounded context:
// the cycle's may have ended). A daemon does not write the same idle
// announcement twice unless the leader's agent asked for a decision since
// the last one: an idle cluster then sees no writes from the agents, and
// etcd keeps renewing every lease while its leader defragments (a leader
// that defragments cannot renew any lease while it has writes to apply).
func (a *Agent) announceIdle(sess *lock.Session, st memberStatus, rep *Report) {
	cur := idleAnnouncement{lease: sess.Lease(), leader: st.isLeader(), reason: rep.Reason}
	a.mu.Lock()
	prev, asked := a.idle, a.leaderAsked
	a.mu.Unlock()
	if !a.cfg.Once && prev.revision > 0 && asked <= prev.revision &&
		prev.lease == cur.lease && prev.leader == cur.leader && prev.reason == cur.reason {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.CommandTimeout)
	defer cancel()
	rev, err := lock.Announce(ctx, sess, a.keys, st.ID, lock.Announcement{
		State: lock.StateIdle, Leader: st.isLeader(), Reason: string(rep.Reason),
		Agent: a.cfg.Identity, Version: a.cfg.Version, Time: rep.End,
	})
	if err != nil {
		if !isNoSpace(err) {
			a.log.Debug("announcing idle failed", "err", err)
		}
		return
	}
	cur.revision = rev
	a.mu.Lock()
	if a.session == sess {
		a.idle = cur
	}
	a.mu.Unlock()
}
