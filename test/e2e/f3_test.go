//go:build e2e && linux

package e2e

import (
	"slices"
	"testing"
	"time"
)

// TestF3LeaderChangesMidRound: leadership changes while a round is under
// way — every agent pending, held at the lock by an operator's
// `etcdctl lock` (HoldLock), the leader's agent waiting for the followers,
// the followers' agents queued for the lock — and the round then goes on:
//
//   - move-leader: leadership is handed, as with `etcdctl move-leader` (the
//     client API's MoveLeader where the release has no etcdctl), to the
//     follower whose agent is next in the lock queue, so that agent takes
//     the lock as a follower's and finds its member leading;
//   - SIGSTOP-leader: the leader is SIGSTOPped until the other two have
//     elected a new one, then continued; it comes back as a follower.
//
// Leader last must hold for the new leader (I3): the member that leads when
// its defrag begins goes after every other member of the round, judged
// from etcd's own account (log intervals, is_leader gauges; the observer's
// announcement check at cleanup judges the turn that led to it). The new
// leader's agent goes back to the leader's wait (it announces "pending" as
// the leader after the change), the old leader is defragmented as a
// follower, every member once, one at a time (I1), no data change (I4).
func TestF3LeaderChangesMidRound(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		t.Run("move-leader", func(t *testing.T) { testF3(t, line, false) })
		t.Run("SIGSTOP-leader", func(t *testing.T) { testF3(t, line, true) })
	})
}

func testF3(t *testing.T, line string, stop bool) {
	c, obs, ctx, before, old, n := newRoundCluster(t, line)

	var avoid []*Member
	args := turnArgs
	if stop {
		avoid = []*Member{old}
		args = append(slices.Clone(turnArgs), stopTTL)
	}
	hold, err := c.HoldLock(ctx, t, avoid...)
	if err != nil {
		t.Fatal(err)
	}
	c.StartAgents(t, AgentOptions{Args: args})
	if _, err := obs.WaitPending(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}

	var lead *Member
	if stop {
		if err := old.Stop(); err != nil {
			t.Fatal(err)
		}
		if lead, err = c.LeaderAmong(ctx, others(c.Members(), old)); err != nil {
			t.Fatal(err)
		}
		if err := old.Cont(); err != nil {
			t.Fatal(err)
		}
		agreed, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if agreed != lead {
			t.Fatalf("after %s came back, %s leads, not %s, whom the others elected", old.Name, agreed.Name, lead.Name)
		}
		t.Logf("leader %s SIGSTOPped with every agent pending; %s elected; %s continued", old.Name, lead.Name, old.Name)
	} else {
		// An agent announces "pending" before it puts its key in the
		// lock queue: wait for a follower's key.
		var q []LockWaiter
		if err := obs.Wait(ctx, "a follower's agent in the lock queue", func() bool {
			var err error
			if q, err = c.LockQueue(ctx); err != nil || len(q) == 0 {
				return false
			}
			for _, w := range q[1:] { // q[0] is the harness's hold
				if m := memberOfLease(c, obs, w.Lease); m != nil && m != old {
					lead = m
					return true
				}
			}
			return false
		}); err != nil {
			t.Fatalf("%v: the lock queue %v", err, q)
		}
		if err := c.MoveLeader(ctx, lead); err != nil {
			t.Fatal(err)
		}
		how := "etcdctl move-leader"
		if c.Etcd.Ctl == "" {
			how = "the client API's MoveLeader"
		}
		t.Logf("leadership moved from %s to %s (next in the lock queue) with %s, every agent pending", old.Name, lead.Name, how)
	}
	changed := revisionNow(ctx, t, c)
	if err := hold.Release(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()

	ds, err := obs.WaitDefrags(ctx, n+len(c.Members()))
	if err != nil {
		t.Fatal(err)
	}
	ds = ds[n:]
	if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	CheckEachOnce(t, ds, c.Members())
	obs.CheckLeaderLast(t, ds)
	for _, d := range ds {
		leader, known := obs.LeaderAt(d.Member, d.Start)
		switch {
		case !known:
			t.Errorf("%v: no is_leader sample of %s before it began", d, d.Member)
		case d.Member == lead.Name && !leader:
			t.Errorf("%v: %s, the new leader, did not lead when its defrag began: leadership moved again, leader last for the new leader was not judged", d, lead.Name)
		case d.Member == old.Name && leader:
			t.Errorf("%v: %s, the old leader, led again when its defrag began", d, old.Name)
		}
	}
	if last := lastDefrag(ds); last.Member != lead.Name {
		t.Errorf("I3 violated: the new leader %s did not go last: %v", lead.Name, ds)
	}
	if !slices.ContainsFunc(obs.Announcements(), func(a Announcement) bool {
		return a.Member == lead.ID && a.State == "pending" && a.Leader && a.Revision > changed
	}) {
		t.Errorf("the agent of %s, which leads now, never announced pending as the leader after the change (revision %d)", lead.Name, changed)
	}
	Record(t, c, "f3_round_after_change_seconds", lastDefrag(ds).End.Sub(released).Seconds(), "s")
	if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
		t.Error(err)
	}
	obs.CheckData(t, before)
}
