package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestLearnerSkipped: etcd cannot defragment a learner; its agent says so
// and leaves it alone, and does not take a turn.
func TestLearnerSkipped(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	learner, err := c.AddLearner(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, c, learner, "true")
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatalf("RunOnce on a learner: %v", err)
	}
	rep := a.LastReport()
	if rep.Decision != DecisionSkipped || rep.Reason != ReasonLearner {
		t.Errorf("decision, reason = %q, %q; want %q, %q", rep.Decision, rep.Reason, DecisionSkipped, ReasonLearner)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("defrags: %v, want none", ds)
	}
	if got := testutil.ToFloat64(a.metrics.skips.WithLabelValues(string(ReasonLearner))); got != 1 {
		t.Errorf("skips_total{reason=learner} = %v, want 1", got)
	}
	anns, _, err := coord.Announcements(t.Context(), c.ClientT(t), coord.NewKeys(testPrefix))
	if err != nil {
		t.Fatal(err)
	}
	if len(anns) != 0 {
		t.Errorf("a learner's agent announced itself: %v", anns)
	}
}

// TestQuorumAtRisk: with one or two voting members, the others cannot keep
// quorum while a member defragments. The agent refuses unless told
// --allow-quorum-loss.
func TestQuorumAtRisk(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("members=%d", n), func(t *testing.T) {
			c := newCluster(t, etcdtest.Options{Members: n})
			m := c.Members()[0]
			a := newTestAgent(t, c, m, "true")
			err := a.RunOnce(t.Context())
			if got := blockedReason(t, err); got != ReasonQuorum {
				t.Fatalf("reason = %q, want %q (err %v)", got, ReasonQuorum, err)
			}
			if !strings.Contains(err.Error(), "--allow-quorum-loss") {
				t.Errorf("error %q does not name --allow-quorum-loss", err)
			}
			if ds := c.Defrags(); len(ds) != 0 {
				t.Fatalf("defrags without opt-in: %v", ds)
			}
			b := newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.AllowQuorumLoss = true }))
			if err := b.RunOnce(t.Context()); err != nil {
				t.Fatalf("RunOnce with --allow-quorum-loss: %v", err)
			}
			if ds := c.Defrags(); len(ds) != 1 || ds[0].MemberID != m.ID {
				t.Errorf("defrags with opt-in: %v, want one of %s", ds, m.Name)
			}
		})
	}
}

// TestUnhealthyVoterBlocks: while a voting member is down, no agent
// defragments (the cluster would be one failure from losing quorum); once it
// is back, they do.
func TestUnhealthyVoterBlocks(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fs := followers(t, c)
	down := fs[1]
	down.Stop()

	a := newTestAgent(t, c, fs[0], "true")
	err := a.RunOnce(t.Context())
	if got := blockedReason(t, err); got != ReasonUnhealthy {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonUnhealthy, err)
	}
	if !strings.Contains(err.Error(), down.Name) {
		t.Errorf("error %q does not name the member that is down (%s)", err, down.Name)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Fatalf("defrags while a voter is down: %v", ds)
	}
	if err := down.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The member answers a linearizable read once it has caught up (on a
	// busy machine, a while after its restart): until then the agent still
	// refuses, with the same reason.
	waitFor(t, 60*time.Second, "a defrag once the member is back", func() bool {
		err := a.RunOnce(t.Context())
		if err != nil && blockedReason(t, err) != ReasonUnhealthy {
			t.Fatalf("RunOnce after the member came back: %v", err)
		}
		return err == nil
	})
	if ds := c.Defrags(); len(ds) != 1 || ds[0].MemberID != fs[0].ID {
		t.Errorf("defrags: %v, want one of %s", ds, fs[0].Name)
	}
}

// TestDryRun decides and reports, and never defragments or writes a turn.
func TestDryRun(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	var agents []*testAgent
	for _, m := range c.Members() {
		agents = append(agents, newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.DryRun = true })))
	}
	for i, err := range runAll(t.Context(), agents...) {
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
		rep := agents[i].LastReport()
		if rep.Reason != ReasonDryRun || !rep.DryRun || rep.Rule == nil || !*rep.Rule {
			t.Errorf("agent %d report = %+v, want a dry run whose rule fired", i, rep)
		}
	}
	// The same as daemons.
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, len(agents))
	for _, a := range agents {
		go func() { served <- a.Serve(ctx, Schedule{Every: time.Hour}) }()
	}
	waitFor(t, 30*time.Second, "a scheduled dry-run cycle per agent", func() bool {
		for _, a := range agents {
			if testutil.ToFloat64(a.metrics.cycles) < 2 {
				return false
			}
		}
		return true
	})
	cancel()
	for range agents {
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("defrags in a dry run: %v", ds)
	}
	resp, err := c.ClientT(t).Get(t.Context(), testPrefix, clientv3WithPrefix()...)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("a dry run wrote %d keys under %s", resp.Count, testPrefix)
	}
}

// TestMoveLeader: with --move-leader the leader's agent hands leadership to a
// follower first, and its member is defragmented as a follower.
func TestMoveLeader(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	l := leader(t, c)
	a := newTestAgent(t, c, l, "true", withConfig(func(c *Config) {
		c.MoveLeader = true
		c.LeaderWaitTimeout = 5 * time.Second
		c.LockTTL = time.Second
	}))
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	now := leader(t, c)
	if now.ID == l.ID {
		t.Fatalf("leader is still %s after --move-leader", l.Name)
	}
	ds := c.Defrags()
	if len(ds) != 1 || ds[0].MemberID != l.ID {
		t.Fatalf("defrags: %v, want one of the old leader %s", ds, l.Name)
	}
}

// TestCooldownAcrossRestarts: the cooldown runs from the record in etcd, so a
// restarted agent (a new process) does not defragment again too soon; nor
// does a second agent pointed at the same member by mistake.
func TestCooldownAcrossRestarts(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	m := followers(t, c)[0]
	hour := withConfig(func(c *Config) { c.Cooldown = time.Hour })

	a := newTestAgent(t, c, m, "true", hour)
	b := newTestAgent(t, c, m, "true", hour)
	for i, err := range runAll(t.Context(), a, b) {
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
	}
	if ds := c.Defrags(); len(ds) != 1 {
		t.Fatalf("two agents on one member: defrags %v, want 1", ds)
	}
	reasons := []Reason{a.LastReport().Reason, b.LastReport().Reason}
	if (reasons[0] == ReasonCooldown) == (reasons[1] == ReasonCooldown) {
		t.Errorf("reasons = %v, want exactly one cooldown", reasons)
	}

	restarted := newTestAgent(t, c, m, "true", hour)
	if err := restarted.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := restarted.LastReport().Reason; got != ReasonCooldown {
		t.Errorf("restarted agent: reason %q, want %q", got, ReasonCooldown)
	}
	sinceRule := newTestAgent(t, c, m, "sinceLastDefrag > 3600")
	if err := sinceRule.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := sinceRule.LastReport().Reason; got != ReasonRuleFalse {
		t.Errorf("rule on sinceLastDefrag: reason %q, want %q", got, ReasonRuleFalse)
	}
	if ds := c.Defrags(); len(ds) != 1 {
		t.Errorf("defrags: %v, want 1", ds)
	}
}

// TestRuleFalse: nothing to do is not an error and takes no turn.
func TestRuleFalse(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	a := newTestAgent(t, c, c.Members()[0], "dbSizeFree > 100*1024*1024*1024")
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := a.LastReport().Reason; got != ReasonRuleFalse {
		t.Errorf("reason %q, want %q", got, ReasonRuleFalse)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("defrags: %v", ds)
	}
}
