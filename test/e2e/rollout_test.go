//go:build e2e && linux

package e2e

import (
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// rolloutDefragTimeout is the agents' --defrag-timeout in TestRolloutMidDefrag:
// far longer than the test lets the stopping agent take.
const rolloutDefragTimeout = "--defrag-timeout=5m"

// TestRolloutMidDefrag: a rollout stops a member's etcd and its agent
// together (SIGTERM to both, as the kubelet does) while the member
// defragments (held by a snapshot). etcd finishes the defrag and exits; its
// agent, waiting for the member to answer again, sees the member refuse
// connections and exits at once (0) — not after its --defrag-timeout, which
// would hold the pod in Terminating. Its in-flight record stays, so when
// etcd and the agent come back the next lock holder waits for that member
// first. Judged: the agent's exit within a minute of etcd's; nothing
// overlaps (the observer); after the restart the round completes, each
// member defragmented once, the leader last; no data change.
func TestRolloutMidDefrag(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line})
		obs := c.Observer()
		fragment(t, c, etcddata.FillOptions{Keys: 60, ValueSize: 1 << 20, Garbage: 1.0 / 3}, 6<<20)
		before := obs.Data(t)
		ctx := within(t, 4*time.Minute)
		lead, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := others(c.Members(), lead)[0]
		hold, err := m.HoldSnapshot(ctx, t)
		if err != nil {
			t.Fatal(err)
		}
		n := len(obs.Defrags())
		args := []string{"--schedule=@every 1s", "--cooldown=1h", "--defrag-rule=" + longRule, rolloutDefragTimeout}
		agent := c.StartAgent(t, m, AgentOptions{Args: args})
		d, err := obs.WaitRunning(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Member != m.Name {
			t.Fatalf("the first defrag %v is not of %s, whose agent alone runs", d, m.Name)
		}

		// The rollout: SIGTERM to both; etcd exits once its defrag is over.
		agentExit := make(chan exitResult, 1)
		go func() {
			code, err := agent.Terminate(2 * time.Minute)
			agentExit <- exitResult{code: code, at: time.Now(), err: err}
		}()
		etcdExit := make(chan exitResult, 1)
		go func() {
			err := m.Terminate(2 * time.Minute)
			etcdExit <- exitResult{at: time.Now(), err: err}
		}()
		hold.Release()
		e := <-etcdExit
		if e.err != nil {
			t.Fatal(e.err)
		}
		select {
		case x := <-agentExit:
			if x.err != nil {
				t.Fatal(x.err)
			}
			if x.code != 0 {
				t.Errorf("the agent exited %d, want 0 (graceful); last lines of its log:\n%s", x.code, tail(agent.LogPath, 8))
			}
			Record(t, c, "rollout_agent_exit_after_etcd_seconds", x.at.Sub(e.at).Seconds(), "s")
		case <-time.After(time.Minute):
			t.Fatalf("the agent of %s still runs a minute after its etcd exited (%s): it waits for a member that is gone", m.Name, rolloutDefragTimeout)
		}

		// Back: etcd and its agent, and the agents of the others.
		if err := m.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if err := agent.Restart(); err != nil {
			t.Fatal(err)
		}
		for _, o := range others(c.Members(), m) {
			c.StartAgent(t, o, AgentOptions{Args: args})
		}
		if _, err := obs.WaitDefrags(ctx, n+len(c.Members())); err != nil {
			t.Fatal(err)
		}
		if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
			t.Fatal(err)
		}
		ds := obs.DefragsSince(n)
		CheckEachOnce(t, ds, c.Members())
		obs.CheckLeaderLast(t, ds)
		if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
			t.Error(err)
		}
		obs.CheckData(t, before)
	})
}

// exitResult is how and when a process ended.
type exitResult struct {
	code int
	at   time.Time
	err  error
}
