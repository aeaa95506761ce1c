package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

const smallQuota = 16 << 20

// fillUntilNoSpace writes 64 KiB values under keys key-0..key-(n-1), again
// and again, until etcd refuses with NOSPACE, and returns how many writes
// it took.
func fillUntilNoSpace(t testing.TB, cli *clientv3.Client, n int) int {
	t.Helper()
	val := strings.Repeat("x", 64<<10)
	for i := 0; ; i++ {
		_, err := cli.Put(t.Context(), fmt.Sprintf("/data/key-%d", i%n), val)
		if errors.Is(err, rpctypes.ErrNoSpace) {
			return i
		}
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		if i > 100000 {
			t.Fatalf("no NOSPACE after %d writes", i)
		}
	}
}

// noSpaceRaised reports whether the NOSPACE alarm is raised.
func noSpaceRaised(t testing.TB, cli *clientv3.Client) bool {
	t.Helper()
	r, err := cli.AlarmList(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range r.Alarms {
		if a.Alarm == pb.AlarmType_NOSPACE {
			return true
		}
	}
	return false
}

// queued returns the number of agents in the NOSPACE queue.
func queued(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), coord.NewKeys(testPrefix).NoSpace(), clientv3WithPrefix()...)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// TestNoSpaceRecoveredByDaemons: a cluster whose history fills a small quota
// raises NOSPACE. The agents, running as daemons, bring it back to writable
// with no human step, never two defrags at once.
func TestNoSpaceRecoveredByDaemons(t *testing.T) {
	c := newCluster(t, etcdtest.Options{QuotaBackendBytes: smallQuota})
	cli := c.ClientT(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var agents []*testAgent
	served := make(chan error, len(c.Members()))
	for _, m := range c.Members() {
		a := newTestAgent(t, c, m, "false") // only NOSPACE makes them act
		agents = append(agents, a)
		go func() { served <- a.Serve(ctx, Schedule{Every: 200 * time.Millisecond}) }()
	}
	waitFor(t, 30*time.Second, "every agent in the NOSPACE queue", func() bool { return queued(t, cli) == int64(len(agents)) })

	writes := fillUntilNoSpace(t, cli, 4)
	raised := time.Now()
	t.Logf("NOSPACE after %d writes", writes)
	waitFor(t, 60*time.Second, "NOSPACE disarmed", func() bool { return !noSpaceRaised(t, cli) })
	t.Logf("writable again %v after the alarm", time.Since(raised))
	if _, err := cli.Put(t.Context(), "/data/after", "ok"); err != nil {
		t.Fatalf("put after recovery: %v", err)
	}
	cancel()
	for range agents {
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	checkOneAtATime(t, c.Defrags())
	var recoveries float64
	for _, a := range agents {
		recoveries += testutil.ToFloat64(a.metrics.nospaceRecoveries.WithLabelValues(resultSuccess))
	}
	if recoveries != 1 {
		t.Errorf("successful NOSPACE recoveries = %v, want 1", recoveries)
	}
	for _, m := range c.Members() {
		s, err := cli.Status(t.Context(), m.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		if float64(s.DbSize) >= 0.9*smallQuota {
			t.Errorf("member %s dbSize %d is still above 90%% of the quota", m.Name, s.DbSize)
		}
	}
}

// TestNoSpaceDisarmOnlyBelowThreshold: when live data keeps a member above
// --disalarm-threshold, the agent does not disarm and says why. Once data is
// deleted (deletes work under NOSPACE), it recovers.
func TestNoSpaceDisarmOnlyBelowThreshold(t *testing.T) {
	// The fill stops at the first NOSPACE, when live data is somewhere
	// between 85% and 95% of the quota; a defrag leaves about that much.
	// The threshold sits well below, so the outcome does not depend on
	// where the fill stopped.
	const threshold = 0.75
	c := newCluster(t, etcdtest.Options{QuotaBackendBytes: smallQuota})
	cli := c.ClientT(t)
	var agents []*testAgent
	for _, m := range c.Members() {
		a := newTestAgent(t, c, m, "false", withConfig(func(cfg *Config) { cfg.DisalarmThreshold = threshold }))
		if _, _, _, err := a.prepare(t.Context()); err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
	}
	fillUntilNoSpace(t, cli, 1<<20) // distinct keys: all of it is live
	for _, m := range c.Members() {
		s, err := cli.Status(t.Context(), m.ClientURL)
		if err != nil {
			t.Fatal(err)
		}
		if float64(s.DbSizeInUse) < threshold*smallQuota {
			t.Fatalf("precondition: member %s has %d bytes in use, not above %.0f%% of the quota", m.Name, s.DbSizeInUse, threshold*100)
		}
	}

	errs := runAll(t.Context(), agents...)
	var stuck int
	for i, err := range errs {
		switch r := ReasonOf(err); r {
		case ReasonNoSpaceStuck:
			stuck++
		case "":
			if got := agents[i].LastReport().Reason; got != ReasonNoSpaceElsewhere {
				t.Errorf("agent %d: reason %q, want %q", i, got, ReasonNoSpaceElsewhere)
			}
		default:
			t.Errorf("agent %d: %v", i, err)
		}
	}
	if stuck != 1 {
		t.Fatalf("%d agents reported %s, want exactly the one that acted", stuck, ReasonNoSpaceStuck)
	}
	if !noSpaceRaised(t, cli) {
		t.Fatal("NOSPACE was disarmed although live data is above the threshold")
	}

	if _, err := cli.Delete(t.Context(), "/data/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	errs = runAll(t.Context(), agents...)
	for i, err := range errs {
		if err != nil {
			t.Errorf("agent %d after the delete: %v", i, err)
		}
	}
	if noSpaceRaised(t, cli) {
		t.Fatal("NOSPACE still raised after the data was deleted")
	}
	checkOneAtATime(t, c.Defrags())
}

// TestNoSpaceFallbackToLeader: agents started after the alarm could not join
// the NOSPACE queue (no lease can be granted under NOSPACE). The leader's
// agent recovers; the others keep their hands off.
func TestNoSpaceFallbackToLeader(t *testing.T) {
	c := newCluster(t, etcdtest.Options{QuotaBackendBytes: smallQuota})
	cli := c.ClientT(t)
	fillUntilNoSpace(t, cli, 4)
	l := leader(t, c)
	// The agents read the alarms from their member's Status: every member
	// must have applied the alarm for each agent to see it at once.
	waitFor(t, 30*time.Second, "every member's Status listing NOSPACE", func() bool {
		for _, m := range c.Members() {
			st, err := cli.Status(t.Context(), m.ClientURL)
			if err != nil || len(st.Errors) == 0 {
				return false
			}
		}
		return true
	})

	var agents []*testAgent
	for _, m := range c.Members() {
		agents = append(agents, newTestAgent(t, c, m, "false"))
	}
	for i, err := range runAll(t.Context(), agents...) {
		if err != nil {
			t.Errorf("agent %d: %v", i, err)
		}
		rep := agents[i].LastReport()
		want := ReasonNoSpaceElsewhere
		if agents[i].member.ID == l.ID {
			want = ""
			if rep.Decision != DecisionRecovered {
				t.Errorf("leader's agent decided %q, want %q", rep.Decision, DecisionRecovered)
			}
		}
		if rep.Reason != want {
			t.Errorf("agent of %s: reason %q, want %q", agents[i].member.Name, rep.Reason, want)
		}
	}
	if noSpaceRaised(t, cli) {
		t.Fatal("NOSPACE still raised")
	}
	checkOneAtATime(t, c.Defrags())
}
