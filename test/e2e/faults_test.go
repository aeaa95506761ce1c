//go:build e2e && linux

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// Helpers of the fault scenarios F2, F3, F6, F7 and F8.

// forFaultLines runs fn as one subtest per line of FaultLines: the newest
// selected line, or every selected line when E2E_ETCD_VERSIONS is set.
func forFaultLines(t *testing.T, fn func(t *testing.T, line string)) {
	lines, err := FaultLines()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines {
		t.Run("etcd"+line, func(t *testing.T) { fn(t, line) })
	}
}

// turnArgs make every agent want a defrag whatever the sizes, at most once
// an hour, and check every second: each member is defragmented exactly once
// per round, and an agent that refused a turn asks again within a second.
var turnArgs = []string{"--schedule=@every 1s", "--cooldown=1h", "--defrag-rule=true"}

// stopTTL is the agents' --lock-ttl in scenarios that SIGSTOP a member:
// longer than gRPC takes to declare a connection to a hung member dead (a
// keep-alive ping at most every 10 s — grpc-go raises the agent's
// --keepalive-time=2s to that minimum — plus --keepalive-timeout, 6 s), as
// the agent's default of 30 s is. With the harness's 5 s an agent whose
// lease keep-alive stream runs through the stopped member loses its
// session.
const stopTTL = "--lock-ttl=20s"

// smallData writes 2000 keys of 1 KiB: user data for the I4 check, small
// enough that a defrag takes a moment.
func smallData(t testing.TB, c *Cluster) {
	t.Helper()
	if _, err := c.Fill(within(t, time.Minute), etcddata.FillOptions{Keys: 2000, ValueSize: 1 << 10, NoCompact: true}); err != nil {
		t.Fatal(err)
	}
}

// newRoundCluster starts the cluster of a round scenario: a cluster of the
// line with small user data, its data digest before the round (I4), its
// leader, and the number of defrags logged so far (the round's come after).
func newRoundCluster(t *testing.T, line string) (c *Cluster, obs *Observer, ctx context.Context, before Data, lead *Member, n int) {
	t.Helper()
	c = NewCluster(t, ClusterOptions{Line: line})
	obs = c.Observer()
	ctx = within(t, 3*time.Minute)
	smallData(t, c)
	before = obs.Data(t)
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c, obs, ctx, before, lead, len(obs.Defrags())
}

// agentOf returns the first agent in agents running beside m.
func agentOf(t testing.TB, agents []*Agent, m *Member) *Agent {
	t.Helper()
	for _, a := range agents {
		if a.Member == m {
			return a
		}
	}
	t.Fatalf("no agent beside %s", m.Name)
	return nil
}

// others returns the members of ms except the given ones.
func others(ms []*Member, except ...*Member) []*Member {
	var out []*Member
	for _, m := range ms {
		skip := false
		for _, x := range except {
			skip = skip || x == m
		}
		if !skip {
			out = append(out, m)
		}
	}
	return out
}

// memberOfLease names the member whose agent announced with the lease, or
// nil.
func memberOfLease(c *Cluster, obs *Observer, lease int64) *Member {
	for _, a := range obs.Announcements() {
		if a.Lease == lease {
			return c.MemberByID(a.Member)
		}
	}
	return nil
}

// revisionNow returns the cluster's current revision.
func revisionNow(ctx context.Context, t testing.TB, c *Cluster) int64 {
	t.Helper()
	rev, err := c.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// checkStartedAfter fails the test for every defrag of ds that started
// before at.
func checkStartedAfter(t testing.TB, ds []Defrag, at time.Time, why string) {
	t.Helper()
	for _, d := range ds {
		if d.Start.Before(at) {
			t.Errorf("I2 violated: %v started at %s, before %s (%s)", d, clock(d.Start), clock(at), why)
		}
	}
}

// lastDefrag returns the defrag of ds that started last.
func lastDefrag(ds []Defrag) Defrag {
	var last Defrag
	for _, d := range ds {
		if last.Start.IsZero() || d.Start.After(last.Start) {
			last = d
		}
	}
	return last
}
