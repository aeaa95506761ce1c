//go:build e2e && linux

package e2e

import (
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// TestRound is the basic round on every etcd line: three members with
// fragmentation, three agents as daemons on one shared schedule whose first
// cycle fires at start, and a rule on the members' real sizes. Every member
// must be defragmented exactly once, one at a time (I1), the leader last
// (I3), and no data may change (I4) — all judged by the observer from etcd's
// own account.
func TestRound(t *testing.T) {
	forEachLine(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line})
		obs := c.Observer()
		// 40 MiB written, half deleted and compacted: about 20 MiB free
		// on every member. The default rule wants more than 100 MiB free,
		// which would only make the fill slower; this rule uses the same
		// variables on the same real sizes.
		fragment(t, c, etcddata.FillOptions{Keys: 10_000, ValueSize: 4 << 10, Garbage: 0.5}, 16<<20)
		before := obs.Data(t)
		lead, err := c.Leader(within(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := len(obs.Defrags())

		start := time.Now()
		c.StartAgents(t, AgentOptions{Args: []string{
			"--schedule=@every 1h", // the first cycle runs at start: all three at once
			"--cooldown=1h",
			"--defrag-rule=fragmentation > 0.3 && dbSizeFree > 8*1024*1024",
		}})
		ctx := within(t, 2*time.Minute)
		if _, err := obs.WaitRound(ctx, n+len(c.Members()), c.Members()); err != nil {
			t.Fatal(err)
		}
		if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
			t.Fatal(err)
		}
		Record(t, c, "round_seconds", time.Since(start).Seconds(), "s")

		ds := obs.DefragsSince(n)
		CheckEachOnce(t, ds, c.Members())
		// Leadership can move during a round (an election on a loaded
		// machine); then the observer's announcement check (I3 at cleanup)
		// still judges the new leader's turn.
		judged := obs.CheckLeaderLast(t, ds)
		if !judged {
			t.Logf("leader-last not judged by the round's order: no defrag of a member that led at its start (leader before the round: %s)", lead.Name)
		}
		Record(t, c, "round_leader_last_judged", boolValue(judged), "bool")
		if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
			t.Error(err)
		}
		obs.CheckData(t, before)
	})
}
