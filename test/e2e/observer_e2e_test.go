//go:build e2e && linux

package e2e

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// TestObserverCatchesViolations proves the observer is not blind, on real
// etcd processes of the newest selected line: two followers defragmented at
// once by hand must be reported by both sources (log intervals and inflight
// gauges) as an I1 violation at the cluster's cleanup, and the leader
// defragmented before a follower as an I3 violation.
func TestObserverCatchesViolations(t *testing.T) {
	lines, err := SelectedLines()
	if err != nil {
		t.Fatal(err)
	}
	ct := &captureTB{TB: t}
	// Registered before the cluster: runs after the cluster's cleanup.
	t.Cleanup(func() {
		errs := ct.errors()
		for _, want := range []string{"I1 violated: defrag log intervals overlap", "I1 violated: inflight gauges both 1"} {
			if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, want) }) {
				t.Errorf("the cluster's cleanup reported %q, want a %q", errs, want)
			}
		}
	})
	c := NewCluster(ct, ClusterOptions{Line: lines[len(lines)-1]})
	obs := c.Observer()
	fragment(t, c, etcddata.FillOptions{Keys: 100, ValueSize: 1 << 20, Garbage: 0.1}, 1<<20)
	ctx := within(t, 2*time.Minute)
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var followers []*Member
	for _, m := range c.Members() {
		if m != lead {
			followers = append(followers, m)
		}
	}

	n := len(obs.Defrags())
	var wg sync.WaitGroup
	for _, m := range followers {
		wg.Go(func() {
			if _, err := c.Client().Defragment(ctx, m.ClientURL); err != nil {
				t.Errorf("defragment %s: %v", m.Name, err)
			}
		})
	}
	wg.Wait()
	if _, err := obs.WaitDefrags(ctx, n+2); err != nil {
		t.Fatal(err)
	}
	if len(obs.Overlaps()) == 0 {
		t.Errorf("Overlaps() found nothing in %v", obs.DefragsSince(n))
	}

	n = len(obs.Defrags())
	for _, m := range []*Member{lead, followers[0]} {
		if _, err := c.Client().Defragment(ctx, m.ClientURL); err != nil {
			t.Fatalf("defragment %s: %v", m.Name, err)
		}
	}
	ds, err := obs.WaitDefrags(ctx, n+2)
	if err != nil {
		t.Fatal(err)
	}
	lt := &captureTB{TB: t}
	if !obs.CheckLeaderLast(lt, ds[n:]) || len(lt.errors()) == 0 {
		t.Errorf("CheckLeaderLast(%v) found nothing", ds[n:])
	}
}
