//go:build e2e && linux

package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// f2Args: each refusal waits one --command-timeout for the member that is
// down (a read of a killed member waits for a connection, of a stopped one
// for an answer), three of them in a row before every agent has said why:
// 2 s instead of 5 s keeps that short. --lock-ttl is above the time gRPC
// takes to give up a connection to a hung member (a keep-alive ping every
// 10 s at the least, then --keepalive-timeout, 6 s): with the harness's 5 s,
// an agent whose lease keep-alive stream runs through the SIGSTOPped member
// loses its session, which is safe but makes the agents' account depend on
// which connection a stream happened to take (see stopTTL).
var f2Args = []string{"--command-timeout=2s", stopTTL}

// TestF2MemberDownDuringRound: a follower member is SIGKILLed (then
// restarted), or SIGSTOPped (then continued), while a round is under way:
// every agent has announced "pending" — the followers' agents wait for the
// lock, the leader's agent for the followers — held at the lock by an
// operator's `etcdctl lock` (HoldLock), so that the member goes down at a
// known point, before any agent's health gate. Then the lock is released.
// While the member is down no member may start a defrag (I2, judged from
// etcd's logs: every defrag starts after the member was brought back), and
// the agents of the other two members say why they refuse: unhealthy_member
// in their announcements and on /status, naming the member. Once it is back
// the round finishes: every member exactly once, one at a time (I1), the
// leader last (I3), no data change (I4).
func TestF2MemberDownDuringRound(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		t.Run("SIGKILL", func(t *testing.T) { testF2(t, line, false) })
		t.Run("SIGSTOP", func(t *testing.T) { testF2(t, line, true) })
	})
}

func testF2(t *testing.T, line string, stop bool) {
	c, obs, ctx, before, lead, n := newRoundCluster(t, line)
	victim := others(c.Members(), lead)[0]
	live := others(c.Members(), victim)

	hold, err := c.HoldLock(ctx, t, victim)
	if err != nil {
		t.Fatal(err)
	}
	agents := c.StartAgents(t, AgentOptions{Args: append(slices.Clone(turnArgs), f2Args...)})
	if _, err := obs.WaitPending(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	how := "SIGKILLed"
	if stop {
		how = "SIGSTOPped"
		err = victim.Stop()
	} else {
		err = victim.Kill()
	}
	if err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	if err := hold.Release(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("follower %s %s with every agent pending; lock released", victim.Name, how)

	// Every other agent refuses, and says why.
	for _, m := range live {
		if _, err := obs.WaitAnnouncement(ctx, "the agent of "+m.Name+" refusing with unhealthy_member", func(a Announcement) bool {
			return a.Member == m.ID && a.State == "idle" && a.Reason == "unhealthy_member"
		}); err != nil {
			t.Fatal(err)
		}
		a := agentOf(t, agents, m)
		if err := obs.Wait(ctx, "/status of the agent of "+m.Name+" naming "+victim.Name, func() bool {
			st, err := a.StatusReport(ctx)
			return err == nil && st.Last != nil && st.Last.Reason == "unhealthy_member" && strings.Contains(st.Last.Error, victim.Name)
		}); err != nil {
			st, _ := a.Status(ctx)
			t.Fatalf("%v; /status: %s", err, st)
		}
	}
	refused := time.Now()
	if ds := obs.DefragsSince(n); len(ds) > 0 {
		t.Errorf("I2 violated: defrags while %s was down: %v", victim.Name, ds)
	}
	if a, ok := lastReason(obs, victim); ok {
		t.Logf("the agent beside %s says %q", victim.Name, a)
	}

	back := time.Now()
	if stop {
		err = victim.Cont()
		if err == nil {
			err = victim.WaitHealthy(ctx)
		}
	} else {
		err = victim.Restart(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	Record(t, c, "f2_all_refused_seconds", refused.Sub(down).Seconds(), "s")

	ds, err := obs.WaitDefrags(ctx, n+len(c.Members()))
	if err != nil {
		t.Fatal(err)
	}
	ds = ds[n:]
	if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	checkStartedAfter(t, ds, back, victim.Name+" was brought back then")
	CheckEachOnce(t, ds, c.Members())
	if !obs.CheckLeaderLast(t, ds) {
		t.Errorf("leader-last not judged: no defrag of a member that led at its start (%v)", ds)
	}
	Record(t, c, "f2_round_after_back_seconds", lastDefrag(ds).End.Sub(back).Seconds(), "s")
	if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
		t.Error(err)
	}
	obs.CheckData(t, before)
}

// lastReason returns the reason of the latest announcement of the agents
// beside m.
func lastReason(obs *Observer, m *Member) (string, bool) {
	var reason string
	found := false
	for _, a := range obs.Announcements() {
		if a.Member == m.ID && !a.Deleted {
			reason, found = a.State+"/"+a.Reason, true
		}
	}
	return reason, found
}
