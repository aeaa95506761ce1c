//go:build bench && linux

package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/test/e2e"
)

// newCluster starts a cluster for a benchmark: etcd of the line under test,
// members members, the observer's gauge sampling off: it would cost the
// members a quarter of this machine's two cores at three members, more than
// half at seven, a load measured along with the agents; the observer judges
// I1 from the members' log lines, where the defrag intervals measured here
// also come from.
func newCluster(t testing.TB, members int, quota int64, extra ...string) *e2e.Cluster {
	t.Helper()
	return e2e.NewCluster(t, e2e.ClusterOptions{
		Line: etcdLine(), Members: members, QuotaBackendBytes: quota,
		ExtraArgs: extra, NoGaugeSampling: true,
	})
}

// etcdLine is the etcd line the benchmarks run on: the newest of
// E2E_ETCD_VERSIONS (TestMain sets 3.6 when it is empty).
func etcdLine() string {
	lines, err := e2e.SelectedLines()
	if err != nil || len(lines) == 0 {
		return "3.6"
	}
	return lines[len(lines)-1]
}

// within returns a context of t that ends after d.
func within(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// snapshot kills every member, copies each data directory to dir and starts
// the members again on it: from then on the cluster's data can be reset to
// this moment, byte for byte, with restore. It fails the test on error.
func snapshot(t testing.TB, c *e2e.Cluster, dir string) {
	t.Helper()
	killAll(t, c)
	for _, m := range c.Members() {
		if err := copyDir(m.Dir, filepath.Join(dir, m.Name)); err != nil {
			t.Fatal(err)
		}
	}
	restartAll(t, c)
}

// restore kills every member, replaces each data directory with its copy
// from snapshot and starts the members again.
func restore(t testing.TB, c *e2e.Cluster, dir string) {
	t.Helper()
	killAll(t, c)
	for _, m := range c.Members() {
		if err := os.RemoveAll(m.Dir); err != nil {
			t.Fatal(err)
		}
		if err := copyDir(filepath.Join(dir, m.Name), m.Dir); err != nil {
			t.Fatal(err)
		}
	}
	restartAll(t, c)
}

// settle waits until every member has applied its whole log (the replay
// after a restart is over) and the copies are on disk: a defrag fsyncs a
// new file, and the write-back of gigabytes copied a moment ago would be
// measured with the first defrag that follows.
func settle(t testing.TB, c *e2e.Cluster) {
	t.Helper()
	ctx := within(t, 2*time.Minute)
	for _, m := range c.Members() {
		for {
			st, err := m.Status(ctx)
			if err == nil && st.RaftAppliedIndex >= st.RaftIndex {
				break
			}
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				t.Fatalf("member %s does not catch up: %v (last: %v)", m.Name, err, st)
			}
		}
	}
	syscall.Sync()
}

func killAll(t testing.TB, c *e2e.Cluster) {
	t.Helper()
	for _, m := range c.Members() {
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
	}
}

// restartAll starts every member at once (one alone has no quorum and
// would not answer) and waits until they agree on a leader.
func restartAll(t testing.TB, c *e2e.Cluster) {
	t.Helper()
	ctx := within(t, 2*time.Minute)
	var wg sync.WaitGroup
	errs := make([]error, len(c.Members()))
	for i, m := range c.Members() {
		wg.Go(func() { errs[i] = m.Restart(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	settle(t, c)
}

// copyDir copies the tree src to dst (which must not exist) with cp -a.
func copyDir(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %w: %s", src, dst, err, out)
	}
	return nil
}

// logEvent is one line of an agent's JSON log.
type logEvent struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
	// The cycle event's waits, in seconds.
	LeaderWait float64 `json:"leader_wait_seconds"`
	LockWait   float64 `json:"lock_wait_seconds"`
	// The defragmenting event's forecast.
	Expected float64 `json:"expected_defrag_seconds"`
	Source   string  `json:"copy_rate_source"`
}

// agentEvents reads an agent's log events.
func agentEvents(path string) ([]logEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var out []logEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e logEvent
		if err := json.Unmarshal(line, &e); err == nil && !e.Time.IsZero() {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// firstEvent returns the time of the first event with message msg.
func firstEvent(es []logEvent, msg string) (time.Time, bool) {
	for _, e := range es {
		if e.Msg == msg {
			return e.Time, true
		}
	}
	return time.Time{}, false
}

// intervals converts the observer's defrags; leader names the member that
// led when they began ("" if unknown).
func intervals(ds []e2e.Defrag, leader string) []Interval {
	out := make([]Interval, 0, len(ds))
	for _, d := range ds {
		out = append(out, Interval{Member: d.Member, Leader: d.Member == leader, Start: d.Start, End: d.End})
	}
	return out
}

// leaderName returns the name of the cluster's leader, "" if the members
// do not agree on one within a few seconds.
func leaderName(ctx context.Context, c *e2e.Cluster) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if m, err := c.Leader(ctx); err == nil {
		return m.Name
	}
	return ""
}

// du logs the size of a directory tree.
func du(t testing.TB, dir string) {
	t.Helper()
	out, err := exec.Command("du", "-sh", dir).CombinedOutput()
	if err != nil {
		t.Logf("du %s: %v", dir, err)
		return
	}
	t.Logf("du: %s", strings.TrimSpace(string(out)))
}
