//go:build e2e && linux

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// f9Rate is the requests per second of each load goroutine: two loads of
// four goroutines (two writers, two readers) make 320 requests per second.
const f9Rate = 40

// f9Slack is how far a failed request's start and end may lie outside the
// defrag that explains it: the member's log timestamps against the
// harness's clock (3.4 logs milliseconds).
const f9Slack = 50 * time.Millisecond

// TestF9ClientLoad: a steady client load during a whole round of the
// agents, on members whose defrags take 1-3 s each (about 200 MiB in use).
// Two loads run side by side, each two writers (1 KiB puts) and two
// linearizable readers at 40 requests per second per goroutine, every
// goroutine with a client of every member's endpoint and a 5 s timeout per
// request:
//   - "plain": etcd's client as it comes (round robin over the members);
//   - "health": the same with gRPC's client-side health checking, and the
//     members run with etcd's stop-gRPC-service-on-defrag (3.5+), so a
//     defragmenting member gets no new requests.
//
// A request fails when it returns an error, its timeout included. With the
// agents no request of either load may fail (the pass condition) but one
// that waited its whole timeout on a member whose defrag lasted longer:
// one member's defrag explains it, not the agents (on a loaded machine a
// defrag of these members can outlast the 5 s). Then,
// the agents gone, the same load runs while all three members are
// defragmented at once by hand, what the agents prevent: failures and the
// longest stall are recorded for the comparison, never judged. The phases'
// numbers (failed, latency, longest time without a successful request) are
// logged and recorded (E2E_RESULTS).
func TestF9ClientLoad(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		ct := &deliberateOverlaps{TB: t}
		// Registered before the cluster: runs after the cluster's cleanup,
		// whose I1 check must have seen the overlap made on purpose.
		t.Cleanup(func() {
			if ct.allowedSince().IsZero() {
				return // failed before the uncoordinated phase
			}
			if len(ct.reported()) == 0 {
				t.Errorf("the observer did not report the uncoordinated defrags as overlapping")
			}
		})
		c := NewCluster(ct, ClusterOptions{Line: line, ExtraArgs: stopGRPCOnDefrag(line)})
		obs := c.Observer()
		ctx := within(t, 5*time.Minute)
		// 30 000 values of 4 KiB, a tenth deleted: about 110 MiB in use,
		// 1-3 s per defrag on two cores: well below the requests' 5 s
		// timeout, which a request that reaches a defragmenting member
		// waits out (see the README's F9 notes).
		fragment(t, c, etcddata.FillOptions{Keys: 30_000, ValueSize: 4 << 10, Garbage: 0.1}, 8<<20)
		before := obs.Data(t)

		loads := []*Load{
			c.StartLoad(t, LoadOptions{Name: "plain", Writers: 2, Readers: 2, Rate: f9Rate}),
			c.StartLoad(t, LoadOptions{Name: "health", Writers: 2, Readers: 2, Rate: f9Rate, DialOptions: HealthCheckedLoad()}),
		}
		// phase measures the loads from start until every request that
		// started before the end of the phase's defrags has finished.
		phase := func(name string, start time.Time, end time.Time) []LoadStats {
			var out []LoadStats
			for _, l := range loads {
				if err := l.WaitPast(ctx, end); err != nil {
					t.Fatal(err)
				}
			}
			to := time.Now()
			for _, l := range loads {
				s := l.Stats(start, to)
				t.Logf("%s, load %s: %v", name, l.opts.Name, s)
				recordLoad(t, c, name, l.opts.Name, s)
				out = append(out, s)
			}
			return out
		}
		steady := func(n int) {
			for _, l := range loads {
				if err := l.WaitRequests(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
		}

		// Baseline: no defrag.
		start := time.Now()
		steady(400)
		phase("baseline", start, time.Now())

		// The agents' round.
		n := len(obs.Defrags())
		start = time.Now()
		agents := c.StartAgents(t, AgentOptions{Args: []string{"--schedule=@every 1h", "--cooldown=1h", "--defrag-rule=true"}})
		ds, err := obs.WaitRound(ctx, n+len(c.Members()), c.Members())
		if err != nil {
			t.Fatal(err)
		}
		ds = ds[n:]
		logDefrags(t, c, "agents", ds)
		withAgents := phase("agents", start, lastEnd(ds))
		if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
			t.Fatal(err)
		}
		CheckEachOnce(t, ds, c.Members())
		if !obs.CheckLeaderLast(t, ds) {
			t.Logf("leader-last not judged by the round's order: no defrag of a member that led at its start (the announcement check below still judges)")
		}
		// No request fails but one that a single member's defrag explains:
		// it waited its whole timeout on a member whose defrag lasted
		// longer (a loaded machine makes a defrag of 117 MiB take seconds).
		for i, s := range withAgents {
			failed, unexplained := loads[i].Unexplained(s.From, s.To, ds, f9Slack)
			Record(t, c, "f9_agents_"+loads[i].opts.Name+"_failed_in_one_defrag", float64(len(failed)-len(unexplained)), "requests")
			if len(unexplained) > 0 {
				t.Errorf("load %s during the agents' round: %d failed requests that no single defrag explains (of %d failed): %v",
					loads[i].opts.Name, len(unexplained), len(failed), unexplained)
			}
		}

		// The agents' part is judged here (I1, I3); from now on the
		// overlaps are made on purpose.
		for _, a := range agents {
			if err := a.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range obs.Overlaps() {
			t.Errorf("I1 violated: %s", v)
		}
		for _, v := range obs.LeaderFirst() {
			t.Errorf("I3 violated: %s", v)
		}
		ct.allow()

		// Uncoordinated: every member at once, by hand.
		steady(200)
		n = len(obs.Defrags())
		start = time.Now()
		var wg sync.WaitGroup
		for _, m := range c.Members() {
			cli, err := m.Client()
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
				defer cancel()
				if _, err := cli.Defragment(dctx, m.ClientURL); err != nil {
					t.Errorf("defragment %s: %v", m.Name, err)
				}
			})
		}
		wg.Wait()
		ds, err = obs.WaitDefrags(ctx, n+len(c.Members()))
		if err != nil {
			t.Fatal(err)
		}
		ds = ds[n:]
		logDefrags(t, c, "uncoordinated", ds)
		if len(logOverlaps(ds)) == 0 {
			t.Errorf("the uncoordinated defrags did not overlap (%v): the comparison shows nothing", ds)
		}
		phase("uncoordinated", start, lastEnd(ds))
		for _, l := range loads {
			l.Stop()
		}
		obs.CheckData(t, before)
	})
}

// stopGRPCOnDefrag returns the member flags that make etcd answer
// NOT_SERVING on its gRPC health service while it defragments, on the
// lines that have it: 3.5.14+ (an experimental flag), 3.6+ (a feature
// gate). Clients without health checking do not ask, so the flag changes
// nothing for them.
func stopGRPCOnDefrag(line string) []string {
	switch line {
	case "3.4":
		return nil
	case "3.5":
		return []string{"--experimental-stop-grpc-service-on-defrag=true"}
	}
	return []string{"--feature-gates=StopGRPCServiceOnDefrag=true"}
}

// recordLoad records a load's statistics in a phase.
func recordLoad(t testing.TB, c *Cluster, phase, load string, s LoadStats) {
	t.Helper()
	p := fmt.Sprintf("f9_%s_%s_", phase, load)
	Record(t, c, p+"requests", float64(s.Requests), "requests")
	Record(t, c, p+"failed", float64(s.Failed), "requests")
	Record(t, c, p+"p99_latency_seconds", s.P99.Seconds(), "s")
	Record(t, c, p+"max_latency_seconds", s.MaxLatency.Seconds(), "s")
	Record(t, c, p+"longest_stall_seconds", s.LongestStall.Seconds(), "s")
}

// logDefrags logs and records the defrags of a phase.
func logDefrags(t testing.TB, c *Cluster, phase string, ds []Defrag) {
	t.Helper()
	var longest time.Duration
	for _, d := range ds {
		longest = max(longest, d.Duration())
	}
	t.Logf("%s: defrags %v", phase, ds)
	Record(t, c, "f9_"+phase+"_longest_defrag_seconds", longest.Seconds(), "s")
	if len(ds) > 0 {
		first := ds[0].Start
		for _, d := range ds {
			if d.Start.Before(first) {
				first = d.Start
			}
		}
		Record(t, c, "f9_"+phase+"_defrag_span_seconds", lastEnd(ds).Sub(first).Seconds(), "s")
	}
}

// lastEnd returns the latest end of ds.
func lastEnd(ds []Defrag) time.Time {
	var end time.Time
	for _, d := range ds {
		if d.End.After(end) {
			end = d.End
		}
	}
	return end
}

// deliberateOverlaps passes everything to its TB, except, once allow was
// called, the I1 reports of the cluster's cleanup: the scenario
// defragments members at once on purpose, after judging the agents' part
// itself. It keeps what it held back.
type deliberateOverlaps struct {
	testing.TB

	mu      sync.Mutex
	since   time.Time
	dropped []string
}

func (d *deliberateOverlaps) allow() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.since = time.Now()
}

func (d *deliberateOverlaps) allowedSince() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.since
}

func (d *deliberateOverlaps) reported() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

func (d *deliberateOverlaps) hold(msg string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.since.IsZero() || !strings.HasPrefix(msg, "I1 violated") {
		return false
	}
	d.dropped = append(d.dropped, msg)
	return true
}

// Errorf reports msg unless it is an I1 report made after allow.
func (d *deliberateOverlaps) Errorf(format string, args ...any) {
	d.Helper()
	msg := fmt.Sprintf(format, args...)
	if d.hold(msg) {
		// Not "I1 violated": stress.sh counts that text as a violation.
		d.Logf("overlap made on purpose, as expected: %s", strings.TrimPrefix(msg, "I1 violated: "))
		return
	}
	d.TB.Errorf("%s", msg)
}

// Error reports like Errorf.
func (d *deliberateOverlaps) Error(args ...any) {
	d.Helper()
	d.Errorf("%s", fmt.Sprint(args...))
}
