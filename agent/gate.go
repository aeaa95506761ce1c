package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The gates: can this agent use a turn (the root role), may it queue (every
// voter up), and, under the lock, can the cluster spare its member now.

// checkRoot makes sure, when etcd auth is on, that the agent's user has the
// root role that Defragment, Compact, HashKV and alarm disarm require, before
// the agent queues for a turn it could not use. It returns the cycle's end
// (permission_denied, or etcd_unavailable), or nil.
func (c *cycle) checkRoot(ctx context.Context) error {
	err := c.rootRole(ctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil || !isPermissionDenied(err):
		return c.unavailable(ctx, err)
	}
	return c.skip(ReasonPermission, err)
}

func (c *cycle) rootRole(ctx context.Context) error {
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
	busy, _, err := a.board.InFlight(lctx)
	cancel()
	if err != nil {
		return c.unavailable(ctx, fmt.Errorf("in-flight defrag records: %w", err))
	}
	vs := slices.DeleteFunc(voters(c.members), func(m *pb.Member) bool { _, ok := busy[m.ID]; return ok })
	if err := a.reachable(ctx, vs, probeStatus); err != nil {
		if ctx.Err() != nil {
			return c.skip(ReasonShutdown, err)
		}
		return c.skip(ReasonUnhealthy, err)
	}
	return nil
}

// healthGate checks, under the lock, that the cluster can spare this member
// now: no alarm, every voting member answers a linearizable read (so quorum
// holds without this one, and none is defragmenting), and this member is
// caught up with the leader. c.st is a fresh status read.
func (c *cycle) healthGate(ctx context.Context) error {
	a := c.a
	nospace, corrupt := a.observeAlarms(c.st)
	switch {
	case len(corrupt) > 0:
		return c.skip(ReasonAlarm, fmt.Errorf("CORRUPT alarm raised by member %x", corrupt[0].MemberID))
	case len(nospace) > 0:
		return c.skip(ReasonAlarm, errors.New("NOSPACE alarm raised meanwhile; the next cycle recovers"))
	}
	vs := voters(c.members)
	if n := len(vs); n < 3 && !a.cfg.AllowQuorumLoss {
		return c.skip(ReasonQuorum, fmt.Errorf("%d voting member(s) and no --allow-quorum-loss", n))
	}
	if findMember(vs, c.st.ID) == nil {
		return c.skip(ReasonLearner, errors.New("member is not a voting member of the list"))
	}
	if err := a.reachable(ctx, vs, probeLinearizable); err != nil {
		if ctx.Err() != nil {
			return c.skip(ReasonShutdown, err)
		}
		return c.skip(ReasonUnhealthy, err)
	}
	if c.st.isLeader() {
		return nil
	}
	lm := findMember(vs, c.st.Leader)
	if lm == nil {
		return c.skip(ReasonUnhealthy, fmt.Errorf("leader %x is not a voting member with client URLs", c.st.Leader))
	}
	ls, err := a.statusOfAny(ctx, lm.ClientURLs)
	if err != nil {
		return c.unavailable(ctx, err)
	}
	if lag := lagBehind(ls.RaftIndex, c.st.RaftAppliedIndex); lag > maxRaftLag {
		return c.skip(ReasonNotCaughtUp, fmt.Errorf("applied index %d is %d behind the leader's %d",
			c.st.RaftAppliedIndex, lag, ls.RaftIndex))
	}
	return nil
}

// lagBehind is how many entries applied is behind the leader's index (0
// when it is not behind).
func lagBehind(leaderIndex, applied uint64) uint64 {
	if applied >= leaderIndex {
		return 0
	}
	return leaderIndex - applied
}
