//go:build bench && linux

package bench

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/test/e2e"
)

// p5Schedule is the agents' schedule in P5, as in the e2e scenario F5: the
// time from the alarm includes up to one interval before a cycle sees it.
const p5Schedule = "@every 1s"

// nsCase is one P5 configuration.
type nsCase struct {
	quota int64
	reps  int
}

// TestP5NoSpaceRecovery measures what the e2e scenario F5 checks: history
// (overwrites, nothing compacted) fills the quota until etcd raises
// NOSPACE; the agents alone (daemons, default rule and flags, checking
// every second) make the cluster writable again. Recorded: from the alarm
// to the first successful put, from the first recovery defrag to it, and
// the recovery's defrags by the members' logs, whose sum is the floor.
func TestP5NoSpaceRecovery(t *testing.T) {
	track(t)
	for _, nc := range cfg.p5 {
		t.Run(fmt.Sprintf("quota=%dMiB", nc.quota>>20), func(t *testing.T) {
			res := NoSpaceCase{Quota: nc.quota, Schedule: p5Schedule, Members: 3}
			for range nc.reps {
				res.Runs = append(res.Runs, noSpaceRun(t, nc.quota))
			}
			results.Update(func(r *Results) {
				r.NoSpace = slices.DeleteFunc(r.NoSpace, func(x NoSpaceCase) bool { return x.Quota == res.Quota }) // a merged run's case replaces the old one
				r.NoSpace = append(r.NoSpace, res)
			})
		})
	}
}

func noSpaceRun(t *testing.T, quota int64) NSRun {
	c := newCluster(t, 3, quota)
	obs := c.Observer()
	cli := c.Client()
	agents := c.StartAgents(t, e2e.AgentOptions{Args: []string{"--schedule=" + p5Schedule, "--lock-ttl=30s"}})
	ctx := within(t, 5*time.Minute)
	for _, a := range agents {
		if err := a.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitNoSpaceQueue(ctx, len(agents)); err != nil {
		t.Fatal(err)
	}
	n := len(obs.Defrags())
	lead := leaderName(ctx, c)
	valueSize := int(min(max(quota/256, 64<<10), 1<<20))
	writes, err := c.FillUntilNoSpace(ctx, "/bench/nospace/", 4, valueSize)
	if err != nil {
		t.Fatal(err)
	}
	raised := time.Now()
	if err := e2e.WaitWritable(ctx, cli); err != nil {
		t.Fatal(err)
	}
	writable := time.Now()
	ds := obs.DefragsSince(n)
	if len(ds) == 0 {
		t.Fatal("writable again, but no member was defragmented")
	}
	run := NSRun{Writable: writable.Sub(raised), FromFirst: writable.Sub(ds[0].Start), Defrags: intervals(ds, lead)}
	t.Logf("NOSPACE after %d writes of %d KiB; writable %v after the alarm, %v after the first defrag; defrags %v (sum %v)",
		writes, valueSize>>10, run.Writable.Round(time.Millisecond), run.FromFirst.Round(time.Millisecond), ds, run.DefragSum().Round(time.Millisecond))
	return run
}
