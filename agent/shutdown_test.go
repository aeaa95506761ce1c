package agent

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestShutdownWaitsForDefrag: SIGTERM (the end of Serve's context) while the
// member defragments. Serve returns only after the defrag ended and was
// recorded and the lock released; Close then ends the session, leaving no
// key of the agent behind.
func TestShutdownWaitsForDefrag(t *testing.T) {
	c := newCluster(t, etcdtest.Options{MaxTxnOps: 1000})
	slowFill(t, c)
	m := followers(t, c)[0]
	keys := coord.NewKeys(testPrefix)

	sent, signal := signalDefrag()
	a := newTestAgent(t, c, m, "true", withLocalInterceptor(signal))
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, Schedule{Every: time.Hour}) }()
	<-sent
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if got := a.LastReport().Decision; got != DecisionDefragmented {
		t.Errorf("decision of the interrupted cycle = %q, want %q", got, DecisionDefragmented)
	}
	ds := c.Defrags()
	if len(ds) != 1 || ds[0].Running() {
		t.Fatalf("defrags %v, want one that ended", ds)
	}
	cli := c.ClientT(t)
	count := func(prefix string) int64 {
		resp, err := cli.Get(t.Context(), prefix, clientv3WithPrefix()...)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if n := count(keys.Lock()); n != 0 {
		t.Errorf("%d lock keys after shutdown, want 0", n)
	}
	if n := count(keys.Defrags()); n != 0 {
		t.Errorf("%d in-flight records after shutdown, want 0", n)
	}
	if n := count(keys.Last(m.ID)); n != 1 {
		t.Errorf("last-defrag record: %d keys, want 1", n)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if err := a.Close(cctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{keys.Agents(), keys.NoSpace()} {
		if n := count(p); n != 0 {
			t.Errorf("%d keys under %s after Close, want 0", n, p)
		}
	}
}

// TestCompactionKeepsRetention: --compaction compacts before the defrag but
// keeps --compaction-retention revisions; it never compacts to the newest.
func TestCompactionKeepsRetention(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	cli := c.ClientT(t)
	for i := range 50 {
		if _, err := cli.Put(t.Context(), "/data/k", string(rune('a'+i%26))); err != nil {
			t.Fatal(err)
		}
	}
	m := followers(t, c)[0]
	a := newTestAgent(t, c, m, "true", withConfig(func(c *Config) {
		c.Compaction = true
		c.CompactionRetention = 10
	}))
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	rev := a.LastReport().Before.Revision
	if _, err := cli.Get(t.Context(), "/data/k", clientv3.WithRev(rev-10)); err != nil {
		t.Errorf("revision %d (newest %d minus the retention) is gone: %v", rev-10, rev, err)
	}
	if _, err := cli.Get(t.Context(), "/data/k", clientv3.WithRev(rev-11)); err == nil {
		t.Errorf("revision %d is still there: no compaction happened", rev-11)
	}
}
