//go:build e2e && linux

package e2e

import (
	"fmt"
	"testing"
	"time"
)

// f7Ticks is how many further cycles every agent must have run, after the
// round, before the count of defrags is judged.
const f7Ticks = 3

// TestF7TwoAgentsOneMember: by mistake two agents run beside the leader and
// two beside one follower (five agents, three members), all on one
// schedule (@every 1s) with the rule true and a cooldown of an hour. Still
// one defrag at a time (I1), the leader last (I3), and each member is
// defragmented exactly once: the second agent of a member finds the first
// one's last/ record (under the lock, or before it queues) and skips with
// "cooldown" — judged from etcd's logs after every one of the five agents
// has announced "cooldown" and run at least three more cycles that ended
// in cooldown (its skips_total{reason="cooldown"}: an agent does not rewrite
// an unchanged announcement). No data changes (I4).
func TestF7TwoAgentsOneMember(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line})
		obs := c.Observer()
		ctx := within(t, 3*time.Minute)
		smallData(t, c)
		before := obs.Data(t)
		lead, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		follower := others(c.Members(), lead)[0]
		n := len(obs.Defrags())

		start := time.Now()
		agents := c.StartAgents(t, AgentOptions{Args: turnArgs})
		agents = append(agents,
			c.StartAgent(t, lead, AgentOptions{Args: turnArgs}),
			c.StartAgent(t, follower, AgentOptions{Args: turnArgs}))
		t.Logf("two agents beside the leader %s and beside the follower %s", lead.Name, follower.Name)
		ds, err := obs.WaitDefrags(ctx, n+len(c.Members()))
		if err != nil {
			t.Fatal(err)
		}
		if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
			t.Fatal(err)
		}
		Record(t, c, "f7_round_seconds", lastDefrag(ds[n:]).End.Sub(start).Seconds(), "s")

		// Every agent says "cooldown", and runs f7Ticks more cycles, each
		// ending in cooldown.
		const cooldownSkips = `etcd_defrag_agent_skips_total{reason="cooldown"}`
		skipsBefore := map[*Agent]float64{}
		for _, a := range agents {
			m, err := a.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			skipsBefore[a] = m[cooldownSkips]
		}
		if err := obs.Wait(ctx, fmt.Sprintf("every agent announcing cooldown and %d more cooldown cycles", f7Ticks), func() bool {
			said := map[string]bool{}
			for _, a := range obs.Announcements() {
				if a.State == "idle" && a.Reason == "cooldown" {
					said[a.Agent] = true
				}
			}
			for _, a := range agents {
				m, err := a.Metrics(ctx)
				if err != nil || !said[a.Identity()] || m[cooldownSkips]-skipsBefore[a] < f7Ticks {
					return false
				}
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}

		ds = obs.DefragsSince(n)
		CheckEachOnce(t, ds, c.Members())
		if !obs.CheckLeaderLast(t, ds) {
			t.Errorf("leader-last not judged: no defrag of a member that led at its start (%v)", ds)
		}
		// How the second agent of a member learnt it was done: its cycles
		// that took the lock (announced "locked") and ended in cooldown.
		for _, m := range []*Member{lead, follower} {
			var turns, underLock int
			locked := map[int64]bool{} // by session lease: took the lock in the current cycle
			for _, a := range obs.Announcements() {
				if a.Member != m.ID || a.Deleted {
					continue
				}
				switch a.State {
				case "locked":
					locked[a.Lease] = true
				case "defragmenting":
					turns++
				case "idle":
					if locked[a.Lease] && a.Reason == "cooldown" {
						underLock++
					}
					locked[a.Lease] = false
				}
			}
			t.Logf("member %s: %d defrag turn(s) by its two agents; %d turn(s) that found the other's record under the lock", m.Name, turns, underLock)
			if turns != 1 {
				t.Errorf("member %s: its agents announced %d defrag turns, want 1", m.Name, turns)
			}
		}
		if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
			t.Error(err)
		}
		obs.CheckData(t, before)
	})
}
