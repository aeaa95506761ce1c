//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefragsSince returns the defrags recorded after the first n, in the
// order their start lines were read: with n := len(o.Defrags()) taken
// before a round, the defrags of that round.
func (o *Observer) DefragsSince(n int) []Defrag {
	ds := o.Defrags()
	if n > len(ds) {
		return nil
	}
	return ds[n:]
}

// CheckEachOnce fails the test unless ds holds exactly one finished,
// successful defrag of every member in ms.
func CheckEachOnce(t testing.TB, ds []Defrag, ms []*Member) {
	t.Helper()
	count := map[string]int{}
	for _, d := range ds {
		count[d.Member]++
		if d.Running() || d.Err != "" {
			t.Errorf("defrag %v did not finish successfully", d)
		}
	}
	for _, m := range ms {
		if count[m.Name] != 1 {
			t.Errorf("member %s defragmented %d times, want once (defrags: %v)", m.Name, count[m.Name], ds)
		}
		delete(count, m.Name)
	}
	for name, n := range count {
		t.Errorf("member %s defragmented %d times, want never (defrags: %v)", name, n, ds)
	}
}

// CheckLeaderLast fails the test if, in a round of ds in which every
// member needed a defrag, a member that led when its defrag started did not
// go after all the others of that round had ended (I3). ds is cut into
// rounds, in start order, where a member comes again: a NOSPACE recovery
// may defragment every member twice, followers first and the leader last
// each time. It returns false when no defrag in ds was of a member known to
// lead at its start (leadership moved away, or the leader was not sampled):
// then nothing was judged.
func (o *Observer) CheckLeaderLast(t testing.TB, ds []Defrag) bool {
	t.Helper()
	sorted := slices.Clone(ds)
	slices.SortStableFunc(sorted, func(a, b Defrag) int { return a.Start.Compare(b.Start) })
	var rounds [][]Defrag
	seen := map[string]bool{}
	for _, d := range sorted {
		if len(rounds) == 0 || seen[d.Member] {
			rounds = append(rounds, nil)
			clear(seen)
		}
		seen[d.Member] = true
		rounds[len(rounds)-1] = append(rounds[len(rounds)-1], d)
	}
	judged := false
	for _, round := range rounds {
		for _, d := range round {
			if leader, known := o.LeaderAt(d.Member, d.Start); !known || !leader {
				continue
			}
			judged = true
			for _, x := range round {
				if x.Member != d.Member && (x.Running() || !x.End.Before(d.Start)) {
					t.Errorf("I3 violated: leader %s was defragmented (%v) before follower %s was done (%v); the round: %v",
						d.Member, d, x.Member, x, round)
				}
			}
		}
	}
	return judged
}

// WaitAgentsIdle waits until the latest announcement of every agent of the
// members ms says "idle" (or the agent is gone) and no agent announces
// anything active. ctx bounds the wait.
func (o *Observer) WaitAgentsIdle(ctx context.Context, ms []*Member) error {
	return o.Wait(ctx, "every agent idle", func() bool {
		latest := map[int64]Announcement{}
		for _, a := range o.Announcements() {
			latest[a.Lease] = a
		}
		seen := map[uint64]bool{}
		for _, a := range latest {
			if !a.Deleted && a.State != "idle" {
				return false
			}
			if !a.Deleted {
				seen[a.Member] = true
			}
		}
		for _, m := range ms {
			if !seen[m.ID] {
				return false
			}
		}
		return true
	})
}

// WaitRound waits until n defrags have ended, like WaitDefrags, but gives
// up early, with an error naming the agent and its reason, when an agent
// beside one of ms announces that a cycle was blocked (idle with a reason
// such as etcd_unavailable or lock_timeout; see the README's reasons)
// before that: such an agent has lost its turn until its next scheduled
// cycle.
// The reason is the agents' account; it only makes a failure quick and
// clear, the judgement stays etcd's. ctx bounds the wait.
func (o *Observer) WaitRound(ctx context.Context, n int, ms []*Member) ([]Defrag, error) {
	var ds []Defrag
	var gaveUp *Announcement
	err := o.Wait(ctx, fmt.Sprintf("%d finished defrags", n), func() bool {
		ds = o.Defrags()
		done := 0
		for _, d := range ds {
			if !d.Running() {
				done++
			}
		}
		if done >= n {
			return true
		}
		for _, a := range o.Announcements() {
			if !a.Deleted && a.State == "idle" && blocked(a.Reason) && slices.ContainsFunc(ms, func(m *Member) bool { return m.ID == a.Member }) {
				gaveUp = &a
				return true
			}
		}
		return false
	})
	switch {
	case err != nil:
		return ds, fmt.Errorf("%w (have %v)", err, ds)
	case gaveUp != nil:
		name := fmt.Sprintf("%x", gaveUp.Member)
		if m := o.c.MemberByID(gaveUp.Member); m != nil {
			name = m.Name
		}
		return ds, fmt.Errorf("the agent of %s ended a cycle without a defrag (reason %s) before the round was done (defrags: %v); see its log",
			name, gaveUp.Reason, ds)
	}
	return ds, nil
}

// blocked reports whether an agent's reason means a defrag was needed and
// did not happen (the README's reasons with which --once exits 1).
func blocked(reason string) bool {
	switch reason {
	case "", "rule_false", "cooldown", "learner", "dry_run", "nospace_elsewhere", "shutdown":
		return false
	}
	return true
}

// WaitNoKeys waits until no key exists under prefix (for example the
// agents' defrag/ records). ctx bounds the wait.
func (c *Cluster) WaitNoKeys(ctx context.Context, prefix string) error {
	cli := c.Client()
	var last string
	for {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := cli.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		cancel()
		if err == nil && resp.Count == 0 {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			var keys []string
			for _, kv := range resp.Kvs {
				keys = append(keys, string(kv.Key))
			}
			last = "still there: " + strings.Join(keys, ", ")
		}
		if err := pause(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("wait for no keys under %s: %w (%s)", prefix, err, last)
		}
	}
}

// EnvResults names a file to which Record appends one JSON line per
// measured result (the stress command and the README's numbers use it).
const EnvResults = "E2E_RESULTS"

var resultsMu sync.Mutex // serialises appends to the results file

// Record logs a measured result of a scenario and, with EnvResults set,
// appends {"test","etcd","name","value","unit","time"} to that file.
// Results are evidence for the documentation, never pass conditions.
func Record(t testing.TB, c *Cluster, name string, value float64, unit string) {
	t.Helper()
	t.Logf("result: %s on etcd %s = %g %s", name, c.Etcd.Version, value, unit)
	path := os.Getenv(EnvResults)
	if path == "" {
		return
	}
	line, err := json.Marshal(map[string]any{
		"test": t.Name(), "etcd": c.Etcd.Version, "name": name, "value": value, "unit": unit,
		"time": time.Now().UTC().Format(time.RFC3339),
	})
	if err != nil {
		t.Errorf("record result: %v", err)
		return
	}
	resultsMu.Lock()
	defer resultsMu.Unlock()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Errorf("record result: %v", err)
		return
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Write(append(line, '\n')); err != nil {
		t.Errorf("record result: %v", err)
	}
}
