package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// leaderPoll bounds each sleep of the leader's wait between re-reads, so
// changes no watch reports (membership, leadership) are seen too.
const leaderPoll = 2 * time.Second

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

// errNoSpaceRaised ends the leader's wait when the cluster enters NOSPACE.
var errNoSpaceRaised = errors.New("NOSPACE alarm raised while the leader's agent waited for the followers")

// waitFollowers is the leader's wait: it returns once every voting follower
// member has had its say. A follower is done when one of its agents has
// announced a decision after this agent's pending announcement and none of its
// agents is in a turn (pending, locked, defragmenting), or — with no agent
// running — when it was defragmented after this cycle began. Follower agents
// that run as daemons evaluate their rule as soon as they see the leader's
// announcement, so all of this takes as long as their turns.
//
// A follower member without any agent, or whose agents ended a cycle since
// the leader asked but were held back (see undecided), is waited for one
// lock TTL (an agent
// started at the same moment has announced itself by then), then the leader
// goes on. A follower whose agent is present but not done is waited for until
// LeaderWaitTimeout; then the cycle gives up (leader_wait_timeout). The wait
// also ends when this member no longer leads, and with errNoSpaceRaised when
// the cluster enters NOSPACE.
func (c *cycle) waitFollowers(ctx context.Context) error {
	a := c.a
	if !c.announcedLeader {
		// The pending announcement must say "leader" for followers to react.
		if err := c.announce(ctx, lock.StatePending); err != nil {
			return c.unavailable(ctx, err)
		}
	}
	start := a.now()
	if c.leaderDeadline.IsZero() {
		// The first wait began when the announcement was sent.
		if c.announcedAt.Before(start) {
			start = c.announcedAt
		}
		c.leaderDeadline = start.Add(a.cfg.LeaderWaitTimeout)
	}
	a.metrics.waiting.WithLabelValues(waitLeader).Set(1)
	defer func() {
		a.metrics.waiting.WithLabelValues(waitLeader).Set(0)
		d := a.now().Sub(start)
		a.metrics.leaderWait.Observe(d.Seconds())
		c.rep.LeaderWaitSeconds += d.Seconds()
	}()
	cluster := a.clusterClient()
	logged := false
	for {
		waiting, absent, rev, err := c.followers(ctx)
		if err != nil {
			return c.unavailable(ctx, err)
		}
		now := a.now()
		switch {
		case len(waiting) == 0 && len(absent) == 0:
			c.waited = true
			return nil
		case len(waiting) == 0 && (now.Sub(c.announcedAt) >= a.cfg.LockTTL || !now.Before(c.leaderDeadline)):
			c.log.Info("leader goes on: no agent runs beside these followers, or it was held back", "followers", absent)
			c.waited = true
			return nil
		case !now.Before(c.leaderDeadline):
			return c.skip(ReasonLeaderWait, fmt.Errorf("followers not done after %v: %v (no agent: %v)",
				a.cfg.LeaderWaitTimeout, waiting, absent))
		}
		if !logged {
			c.log.Info("leader waits for followers", "followers_waiting", waiting, "followers_without_agent", absent)
			logged = true
		}
		wake := min(c.leaderDeadline.Sub(now), leaderPoll)
		wctx, cancel := context.WithTimeout(ctx, wake)
		err = lock.WaitChange(wctx, cluster, a.keys.Prefix(), rev)
		cancel()
		if ctx.Err() != nil {
			return c.skip(ReasonShutdown, ctx.Err())
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			c.log.Debug("watch during the leader's wait failed; polling", "err", err)
		}
		// Still the leader? A member that stopped leading goes as a follower.
		st, err := a.localStatus(ctx)
		if err != nil {
			return c.unavailable(ctx, err)
		}
		c.observe(st)
		if nospace, _ := a.observeAlarms(st); len(nospace) > 0 {
			// The followers cannot announce anything now (a put), and this
			// agent may be the one to recover: end the wait.
			return errNoSpaceRaised
		}
		if !st.isLeader() {
			c.log.Info("member no longer leads: going as a follower")
			c.waited = true
			return nil
		}
	}
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
	anns, rev, err := lock.Announcements(ctx, a.clusterClient(), a.keys)
	if err != nil {
		return nil, nil, 0, err
	}
	for _, m := range voters(c.members) {
		if m.ID == c.st.ID {
			continue
		}
		switch s, err := c.follower(ctx, m.ID, anns); {
		case err != nil:
			return nil, nil, 0, err
		case s == followerWaiting:
			waiting = append(waiting, memberName(m))
		case s == followerNoAgent:
			absent = append(absent, memberName(m))
		case s == followerUndecided:
			absent = append(absent, memberName(m)+": its agent was held back")
		}
	}
	return waiting, absent, rev, nil
}

// follower classifies one follower member.
func (c *cycle) follower(ctx context.Context, id uint64, anns []lock.Announcement) (followerState, error) {
	mine := slices.DeleteFunc(slices.Clone(anns), func(x lock.Announcement) bool { return x.Member != id })
	if len(mine) == 0 {
		rec, found, err := lock.Get[lastRecord](ctx, c.a.clusterClient(), c.a.keys.Last(id))
		if err != nil {
			return 0, err
		}
		if found && !rec.Value.End.Before(c.rep.Start) {
			return followerResolved, nil
		}
		return followerNoAgent, nil
	}
	decided, unsure := false, false
	for _, x := range mine {
		if x.State.Active() {
			return followerWaiting, nil
		}
		if x.Revision > c.announcedRev {
			if undecided(x.Reason) {
				unsure = true
			} else {
				decided = true
			}
		}
	}
	switch {
	case decided:
		return followerResolved, nil
	case unsure:
		return followerUndecided, nil
	}
	return followerWaiting, nil
}

// activeFollowers names the follower members with an agent in a turn now.
func (c *cycle) activeFollowers(ctx context.Context) ([]string, error) {
	a := c.a
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	anns, _, err := lock.Announcements(ctx, a.clusterClient(), a.keys)
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
