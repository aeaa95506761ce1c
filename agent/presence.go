package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// presence is the agent's standing among its peers: its session (the lease
// its keys live by), its place in the NOSPACE queue, and what it last
// announced when idle. It is safe for concurrent use: cycles and Serve's
// watch share it.
type presence struct {
	mu          sync.Mutex
	sess        *lock.Session
	nospace     *lock.Mutex // this session's place in the NOSPACE queue; nil until joined
	idle        idle        // the last idle announcement of this session
	leaderAsked int64       // the revision of the latest request of the leader's agent seen
	sessions    int         // sessions started so far
}

// idle is an idle announcement as written: what it said, at which revision.
type idle struct {
	leader   bool
	reason   Reason
	revision int64
}

// session returns the current session; nil when there is none (not started,
// abandoned after a failed unlock, or closed).
func (p *presence) session() *lock.Session {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sess
}

// noSpaceQueue returns the session and its place in the NOSPACE queue (nil
// when not queued).
func (p *presence) noSpaceQueue() (*lock.Session, *lock.Mutex) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sess, p.nospace
}

// start records a new session, replacing sess (the one that was lost), and
// reports whether an earlier session existed.
func (p *presence) start(sess *lock.Session) (replaced bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	replaced = p.sessions > 0
	p.sess, p.nospace, p.idle = sess, nil, idle{}
	p.sessions++
	return replaced
}

// drop stops the keep-alives of sess, if it is still the current session,
// so that its lease and every key bound to it expire within one TTL; the
// next cycle starts a new session.
func (p *presence) drop(sess *lock.Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sess != sess {
		return
	}
	sess.Abandon()
	p.sess, p.nospace = nil, nil
}

// queued records sess's place in the NOSPACE queue, if sess is still the
// current session.
func (p *presence) queued(sess *lock.Session, q *lock.Mutex) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sess == sess {
		p.nospace = q
	}
}

// dequeued forgets q as the place in the NOSPACE queue.
func (p *presence) dequeued(q *lock.Mutex) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nospace == q {
		p.nospace = nil
	}
}

// asked records a request of the leader's agent, seen at revision rev.
func (p *presence) asked(rev int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leaderAsked = max(p.leaderAsked, rev)
}

// repeats reports whether an idle announcement saying cur by sess would
// repeat the last one with nothing new to answer: the same words, and no
// request of the leader's agent since it was written.
func (p *presence) repeats(sess *lock.Session, cur idle) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := p.idle
	return p.sess == sess && prev.revision > 0 && p.leaderAsked <= prev.revision &&
		prev.leader == cur.leader && prev.reason == cur.reason
}

// announcedIdle records the idle announcement cur by sess.
func (p *presence) announcedIdle(sess *lock.Session, cur idle) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sess == sess {
		p.idle = cur
	}
}

// close ends the session: revoked, or (after --once) left to expire, so
// that a leader's agent started at the same moment still sees what this
// one decided. ctx bounds the revoke.
func (p *presence) close(ctx context.Context, abandon bool) error {
	p.mu.Lock()
	sess := p.sess
	p.sess, p.nospace = nil, nil
	p.mu.Unlock()
	switch {
	case sess == nil:
		return nil
	case abandon:
		sess.Abandon()
		return nil
	}
	return sess.Close(ctx)
}

// ensureSession makes sure the agent has a live session on the cluster
// client, announces itself, and — for a voting member — joins the NOSPACE
// queue while the cluster is still writable. It reports whether it started
// a session that replaces an earlier one (lost, or abandoned).
func (a *Agent) ensureSession(ctx context.Context, st memberStatus) (replaced bool, err error) {
	sess := a.presence.session()
	if sess != nil && !sess.Expired() {
		a.joinNoSpaceQueue(ctx, st)
		return false, nil
	}
	if sess != nil {
		a.log.Warn("session lease lost; starting a new session", "lease", fmt.Sprintf("%x", int64(sess.Lease())))
		sess.Abandon()
	}
	gctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	sess, err = lock.NewSession(gctx, a.cluster, a.cfg.LockTTL)
	cancel()
	if err != nil {
		return false, fmt.Errorf("session: %w", err)
	}
	replaced = a.presence.start(sess)
	// The first announcement says "starting", unless a cycle that needed no
	// session (nothing to do) has ended already: then it says what that
	// cycle decided, or the agent would look undecided until its next one.
	first := a.signed(coord.Announcement{State: coord.StateStarting, Leader: st.isLeader()}, a.now())
	a.mu.Lock()
	last := a.last
	a.mu.Unlock()
	if !last.End.IsZero() {
		first.State, first.Reason = coord.StateIdle, string(last.Reason)
	}
	actx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	rev, err := a.board.Announce(actx, sess, st.ID, first)
	cancel()
	if err != nil {
		return replaced, err
	}
	if first.State == coord.StateIdle {
		a.presence.announcedIdle(sess, idle{leader: st.isLeader(), reason: last.Reason, revision: rev})
	}
	a.log.Info("session started", "lease", fmt.Sprintf("%x", int64(sess.Lease())), "ttl_seconds", a.cfg.LockTTL.Seconds())
	a.joinNoSpaceQueue(ctx, st)
	return replaced, nil
}

// joinNoSpaceQueue puts the agent in the NOSPACE queue if it is not there.
// Joining is a write, so it can only happen while the cluster is writable;
// failures are retried next cycle. Once queued with its session the agent
// writes nothing more: the key lives as long as the session.
func (a *Agent) joinNoSpaceQueue(ctx context.Context, st memberStatus) {
	if st.IsLearner {
		return
	}
	sess, q := a.presence.noSpaceQueue()
	if sess == nil || q != nil {
		return
	}
	q = a.board.NoSpaceQueue(sess)
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	if _, err := q.Enqueue(ctx); err != nil {
		a.log.Debug("joining the NOSPACE queue failed; retrying next cycle", "err", err)
		return
	}
	a.presence.queued(sess, q)
}

// announceIdle announces the end of a cycle (on a fresh bounded context:
// the cycle's may have ended). A daemon does not write the same idle
// announcement twice unless the leader's agent asked for a decision since
// the last one: an idle cluster then sees no writes from the agents, and
// etcd keeps renewing every lease while its leader defragments (a leader
// that defragments cannot renew any lease while it has writes to apply).
func (a *Agent) announceIdle(sess *lock.Session, st memberStatus, rep *Report) {
	cur := idle{leader: st.isLeader(), reason: rep.Reason}
	if !a.cfg.Once && a.presence.repeats(sess, cur) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.CommandTimeout)
	defer cancel()
	rev, err := a.board.Announce(ctx, sess, st.ID, a.signed(coord.Announcement{
		State: coord.StateIdle, Leader: st.isLeader(), Reason: string(rep.Reason),
	}, rep.End))
	if err != nil {
		if !isNoSpace(err) {
			a.log.Debug("announcing idle failed", "err", err)
		}
		return
	}
	cur.revision = rev
	a.presence.announcedIdle(sess, cur)
}

// signed is ann as this agent writes it at t: with its identity and version.
func (a *Agent) signed(ann coord.Announcement, t time.Time) coord.Announcement {
	ann.Agent, ann.Version, ann.Time = a.cfg.Identity, a.cfg.Version, t
	return ann
}

// announceOp is an announcement of the agent's session as an operation of a
// transaction (nil if there is no session).
func (a *Agent) announceOp(member uint64, ann coord.Announcement) *clientv3.Op {
	sess := a.presence.session()
	if sess == nil {
		return nil
	}
	op, err := a.board.OpAnnounce(sess, member, a.signed(ann, a.now()))
	if err != nil {
		return nil
	}
	return &op
}
