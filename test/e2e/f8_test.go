//go:build e2e && linux

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestF8AgentsRestarted: two agents are restarted in the middle of a round
// — the follower's agent at the head of the lock queue (pending) and the
// leader's agent (pending, waiting for the followers) — stopped with
// SIGTERM (a graceful stop: the agent takes its key out of the queue and
// revokes its session) or SIGKILL (nothing cleaned up: its keys stay until
// its lease expires), then started again at once. The round is held at the
// lock by an operator's `etcdctl lock` (HoldLock) so that both are pending
// when they go, and released right after. No stale state may block the
// others beyond one lease TTL (--lock-ttl=5s): the round completes, every
// member exactly once, one at a time (I1), the leader last (I3), no data
// change (I4); the stopped sessions' keys are gone (announcements, queue
// keys) and etcd no longer knows their leases; no key of an agent that is
// gone remains. Measured (Record): how long the others waited after the
// lock was released before the first defrag began, and how long each
// stopped session's keys outlived its process.
func TestF8AgentsRestarted(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		t.Run("SIGTERM", func(t *testing.T) { testF8(t, line, false) })
		t.Run("SIGKILL", func(t *testing.T) { testF8(t, line, true) })
	})
}

func testF8(t *testing.T, line string, kill bool) {
	c, obs, ctx, before, lead, n := newRoundCluster(t, line)

	hold, err := c.HoldLock(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	agents := c.StartAgents(t, AgentOptions{Args: turnArgs})
	pending, err := obs.WaitPending(ctx, c.Members())
	if err != nil {
		t.Fatal(err)
	}
	// An agent announces "pending" before it puts its key in the lock
	// queue: wait until the first key after the harness's is an agent's.
	var q []LockWaiter
	var head *Member // the follower whose agent is next after the harness
	if err := obs.Wait(ctx, "an agent's key next in the lock queue", func() bool {
		var err error
		if q, err = c.LockQueue(ctx); err != nil || len(q) < 2 {
			return false
		}
		head = memberOfLease(c, obs, q[1].Lease)
		return head != nil
	}); err != nil {
		t.Fatalf("%v: the lock queue %v", err, q)
	}
	if head == lead {
		t.Fatalf("the lock queue %v does not start with a follower's agent after the harness", q)
	}

	type victim struct {
		role    string
		agent   *Agent
		lease   int64
		stopped time.Time
	}
	victims := []*victim{
		{role: "pending follower " + head.Name, agent: agentOf(t, agents, head), lease: pending[head.Name].Lease},
		{role: "waiting leader " + lead.Name, agent: agentOf(t, agents, lead), lease: pending[lead.Name].Lease},
	}
	sig := "SIGTERM"
	if kill {
		sig = "SIGKILL"
	}
	for _, v := range victims {
		v.stopped = time.Now()
		if kill {
			err = v.agent.Kill()
		} else {
			var code int
			code, err = v.agent.Terminate(30 * time.Second)
			if err == nil && code != 0 {
				err = fmt.Errorf("the agent of the %s exited %d on SIGTERM, want 0", v.role, code)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := v.agent.Restart(); err != nil {
			t.Fatal(err)
		}
		t.Logf("agent of the %s (lease %x) stopped with %s and started again", v.role, v.lease, sig)
	}
	if err := hold.Release(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()

	ds, err := obs.WaitDefrags(ctx, n+len(c.Members()))
	if err != nil {
		t.Fatal(err)
	}
	ds = ds[n:]
	first := ds[0]
	for _, d := range ds {
		if d.Start.Before(first.Start) {
			first = d
		}
	}
	Record(t, c, "f8_held_up_"+sig+"_seconds", first.Start.Sub(released).Seconds(), "s")
	if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	CheckEachOnce(t, ds, c.Members())
	if !obs.CheckLeaderLast(t, ds) {
		t.Errorf("leader-last not judged: no defrag of a member that led at its start (%v)", ds)
	}

	for _, v := range victims {
		if err := obs.Wait(ctx, fmt.Sprintf("the end of the stopped session %x", v.lease), func() bool {
			_, ok := obs.SessionEnded(v.lease)
			return ok
		}); err != nil {
			t.Fatal(err)
		}
		end, _ := obs.SessionEnded(v.lease)
		Record(t, c, "f8_stale_session_"+sig+"_seconds", end.Seen.Sub(v.stopped).Seconds(), "s")
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		ttl, err := c.Client().TimeToLive(rctx, clientv3.LeaseID(v.lease), clientv3.WithAttachedKeys())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if ttl.TTL != -1 {
			t.Errorf("the lease %x of the stopped agent of the %s still lives (TTL %d s, keys %q)", v.lease, v.role, ttl.TTL, ttl.Keys)
		}
	}
	if err := c.WaitNoStaleKeys(ctx); err != nil {
		t.Error(err)
	}
	if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
		t.Error(err)
	}
	obs.CheckData(t, before)
}
