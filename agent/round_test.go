package agent

import (
	"context"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestRoundAllAtOnce starts one agent per member at the same instant, as a
// shared schedule or a batch of --once runs does, with a rule that always
// fires. Every member must be defragmented exactly once, never two at once,
// the leader last, and no data may change. Judged from the members' own log
// lines. Several rounds, fresh agents each time.
func TestRoundAllAtOnce(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 4000, ValueSize: 512, Garbage: 0.5})

	for round := 1; round <= 5; round++ {
		t.Logf("round %d", round)
		l := leader(t, c)
		before := snapshotData(t, c)
		n := len(c.Defrags())
		var agents []*testAgent
		for _, m := range c.Members() {
			agents = append(agents, newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.Once = true })))
		}
		for i, err := range runAll(t.Context(), agents...) {
			if err != nil {
				t.Fatalf("round %d: agent of %s: %v", round, agents[i].member.Name, err)
			}
		}
		ds := defragsSince(c, n)
		checkEachOnce(t, ds, c.Members())
		checkOneAtATime(t, ds)
		if now := leader(t, c); now.ID == l.ID {
			checkLeaderLast(t, ds, l.ID)
		} else {
			t.Logf("leadership moved from %s to %s during the round; leader-last not judged", l.Name, now.Name)
		}
		checkSameData(t, before, snapshotData(t, c))
		for _, a := range agents {
			if got := a.LastReport().Decision; got != DecisionDefragmented {
				t.Errorf("round %d: agent of %s decided %q, want %q", round, a.member.Name, got, DecisionDefragmented)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = a.Close(ctx)
			cancel()
		}
		if t.Failed() {
			return
		}
	}
}

// TestRoundDaemons runs the agents as daemons with one shared schedule: their
// first cycles fire together, and the followers also answer the leader's
// request to decide. Same judgement as TestRoundAllAtOnce.
func TestRoundDaemons(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 4000, ValueSize: 512, Garbage: 0.5})
	l := leader(t, c)
	before := snapshotData(t, c)

	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, len(c.Members()))
	for _, m := range c.Members() {
		a := newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.Cooldown = time.Hour }))
		go func() { served <- a.Serve(ctx, Schedule{Every: time.Hour}) }()
	}
	dctx, dcancel := context.WithTimeout(t.Context(), 60*time.Second)
	ds, err := c.WaitDefrags(dctx, len(c.Members()))
	dcancel()
	cancel()
	for range c.Members() {
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	if err != nil {
		t.Fatalf("wait for defrags: %v (got %v)", err, c.Defrags())
	}
	checkEachOnce(t, ds, c.Members())
	checkOneAtATime(t, ds)
	if now := leader(t, c); now.ID == l.ID {
		checkLeaderLast(t, ds, l.ID)
	}
	checkSameData(t, before, snapshotData(t, c))
}
