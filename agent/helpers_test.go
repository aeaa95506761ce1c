package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// testPrefix is the lock prefix of the agents in these tests.
const testPrefix = "/test-agents/"

// testConfig is the agent configuration the tests start from: every rule
// fires, no cooldown, short TTL, generous bounds.
func testConfig(t testing.TB, src string) Config {
	t.Helper()
	r, err := rule.Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Rule:                r,
		QuotaBytes:          2 << 30,
		CommandTimeout:      2 * time.Second,
		DefragTimeout:       60 * time.Second,
		LockTimeout:         60 * time.Second,
		LeaderWaitTimeout:   60 * time.Second,
		LockPrefix:          testPrefix,
		LockTTL:             2 * time.Second,
		CompactionRetention: 1,
		AutoDisalarm:        true,
		DisalarmThreshold:   0.9,
		VerifyHashKV:        true,
		Identity:            t.Name(),
		Version:             "test",
	}
}

// testAgent is an agent beside one member of an embedded cluster.
type testAgent struct {
	*Agent
	member *etcdtest.Member
	reg    *prometheus.Registry
}

// agentSetup is what a test agent is made of.
type agentSetup struct {
	cfg   Config
	deps  Deps
	local []grpc.DialOption // of the local client
	dial  []grpc.DialOption // of the clients the agent dials (cluster, peers)
}

// agentOption changes a test agent's configuration or dependencies.
type agentOption func(*agentSetup)

func withConfig(f func(*Config)) agentOption {
	return func(s *agentSetup) { f(&s.cfg) }
}

// withLocalInterceptor wraps the unary RPCs of the agent's local client.
func withLocalInterceptor(i grpc.UnaryClientInterceptor) agentOption {
	return func(s *agentSetup) { s.local = append(s.local, grpc.WithUnaryInterceptor(i)) }
}

// withClusterInterceptor wraps the unary RPCs of the clients the agent
// dials: the cluster client (session, lock, records) and the peers'.
func withClusterInterceptor(i grpc.UnaryClientInterceptor) agentOption {
	return func(s *agentSetup) { s.dial = append(s.dial, grpc.WithUnaryInterceptor(i)) }
}

// newTestAgent makes an agent for member m, closed at the end of the test.
func newTestAgent(t testing.TB, c *etcdtest.Cluster, m *etcdtest.Member, src string, opts ...agentOption) *testAgent {
	t.Helper()
	s := agentSetup{cfg: testConfig(t, src)}
	s.cfg.Identity = fmt.Sprintf("%s/%s", t.Name(), m.Name)
	reg := prometheus.NewRegistry()
	s.deps = Deps{Logger: testLogger(t, m.Name), Registerer: reg}
	for _, o := range opts {
		o(&s)
	}
	cfg, deps := s.cfg, s.deps
	user := etcdtest.RootUser
	if cfg.User != "" {
		user = cfg.User
	}
	lc := c.ClientConfigAs(user, m.ClientURL)
	lc.DialOptions = append(lc.DialOptions, s.local...)
	local, err := clientv3.New(lc)
	if err != nil {
		t.Fatal(err)
	}
	deps.Local = local
	deps.Dial = func(eps []string, opts ...grpc.DialOption) (*clientv3.Client, error) {
		cc := c.ClientConfigAs(user, eps...)
		cc.DialOptions = append(append(cc.DialOptions, opts...), s.dial...)
		return clientv3.New(cc)
	}
	a, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Close(ctx)
	})
	return &testAgent{Agent: a, member: m, reg: reg}
}

// testLogger logs to the test's output, shown when the test fails or with -v.
func testLogger(t testing.TB, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("agent", name)
}

// newCluster starts an embedded cluster for one test.
func newCluster(t testing.TB, opts etcdtest.Options) *etcdtest.Cluster {
	t.Helper()
	opts.UnsafeNoFsync = true
	return etcdtest.New(t, opts)
}

// fill writes data with garbage, so every member has something to reclaim.
func fill(t testing.TB, c *etcdtest.Cluster, opts etcddata.FillOptions) etcddata.FillResult {
	t.Helper()
	cli := c.ClientT(t)
	res, err := etcddata.Fill(t.Context(), cli, opts)
	if err != nil {
		t.Fatalf("fill: %v", err)
	}
	if err := c.WaitCompacted(t.Context(), res.Revision); err != nil {
		t.Fatalf("wait compacted: %v", err)
	}
	return res
}

// leader returns the cluster's leader.
func leader(t testing.TB, c *etcdtest.Cluster) *etcdtest.Member {
	t.Helper()
	m, err := c.Leader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// followers returns the running voting members other than the leader.
func followers(t testing.TB, c *etcdtest.Cluster) []*etcdtest.Member {
	t.Helper()
	l := leader(t, c)
	var out []*etcdtest.Member
	for _, m := range c.Members() {
		if m != l && m.Running() && !m.IsLearner() {
			out = append(out, m)
		}
	}
	return out
}

// runAll runs RunOnce on every agent at the same instant and returns their
// errors in order.
func runAll(ctx context.Context, agents ...*testAgent) []error {
	errs := make([]error, len(agents))
	start := make(chan struct{})
	done := make(chan int)
	for i, a := range agents {
		go func() {
			<-start
			errs[i] = a.RunOnce(ctx)
			done <- i
		}()
	}
	close(start)
	for range agents {
		<-done
	}
	return errs
}

// defragsSince returns the defrags recorded after the first n.
func defragsSince(c *etcdtest.Cluster, n int) []etcdtest.Defrag {
	return slices.Clone(c.Defrags()[n:])
}

// checkOneAtATime fails the test if two defrags overlap: judged from the
// members' own log lines.
func checkOneAtATime(t testing.TB, ds []etcdtest.Defrag) {
	t.Helper()
	if ov := etcdtest.Overlaps(ds); len(ov) > 0 {
		t.Errorf("defrags overlap (I1): %v", ov)
	}
}

// checkLeaderLast fails the test unless the leader's defrag began after every
// other defrag ended.
func checkLeaderLast(t testing.TB, ds []etcdtest.Defrag, leaderID uint64) {
	t.Helper()
	var ld *etcdtest.Defrag
	for i := range ds {
		if ds[i].MemberID == leaderID {
			ld = &ds[i]
		}
	}
	if ld == nil {
		t.Errorf("leader %x was not defragmented: %v", leaderID, ds)
		return
	}
	for _, d := range ds {
		if d.MemberID != leaderID && !d.End.Before(ld.Start) {
			t.Errorf("leader %x defragmented at %v before follower %v finished (I3)", leaderID, ld, d)
		}
	}
}

// checkEachOnce fails the test unless every given member was defragmented
// exactly once.
func checkEachOnce(t testing.TB, ds []etcdtest.Defrag, members []*etcdtest.Member) {
	t.Helper()
	count := map[uint64]int{}
	for _, d := range ds {
		count[d.MemberID]++
	}
	for _, m := range members {
		if count[m.ID] != 1 {
			t.Errorf("member %s defragmented %d times, want 1 (defrags: %v)", m.Name, count[m.ID], ds)
		}
	}
	if len(ds) != len(members) {
		t.Errorf("got %d defrags, want %d: %v", len(ds), len(members), ds)
	}
}

// dataState is what I4 compares: every key outside the agents' prefix with
// its modification revision and value, and each member's HashKV at one
// revision (the agents' own keys change the revision and the hash, but every
// member must agree).
type dataState struct {
	Revision int64
	Keys     map[string]string // key -> mod revision and value digest
	Hashes   map[uint64]uint32
}

// snapshotData reads the data state through every member.
func snapshotData(t testing.TB, c *etcdtest.Cluster) dataState {
	t.Helper()
	cli := c.ClientT(t)
	ctx := t.Context()
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	st := dataState{Revision: resp.Header.Revision, Keys: map[string]string{}, Hashes: map[uint64]uint32{}}
	for _, kv := range resp.Kvs {
		if strings.HasPrefix(string(kv.Key), testPrefix) {
			continue
		}
		st.Keys[string(kv.Key)] = fmt.Sprintf("%d/%x", kv.ModRevision, sha256.Sum256(kv.Value))
	}
	for _, m := range c.Members() {
		if !m.Running() || m.IsLearner() {
			continue
		}
		h, err := cli.HashKV(ctx, m.ClientURL, st.Revision)
		if err != nil {
			t.Fatalf("hashkv %s: %v", m.Name, err)
		}
		st.Hashes[m.ID] = h.Hash
	}
	return st
}

// checkSameData fails the test unless the user data is unchanged and every
// member has the same HashKV at a common revision (I4).
func checkSameData(t testing.TB, before, after dataState) {
	t.Helper()
	if !maps.Equal(before.Keys, after.Keys) {
		t.Errorf("user data changed: %d keys before, %d after", len(before.Keys), len(after.Keys))
	}
	for _, st := range []dataState{before, after} {
		var want uint32
		first := true
		for id, h := range st.Hashes {
			if first {
				want, first = h, false
			}
			if h != want {
				t.Errorf("member %x HashKV %d at revision %d differs from %d (I4)", id, h, st.Revision, want)
			}
		}
	}
}

// blockedReason returns the reason of a *BlockedError, failing on others.
func blockedReason(t testing.TB, err error) Reason {
	t.Helper()
	var b *BlockedError
	if !errors.As(err, &b) {
		t.Fatalf("error = %v, want a *BlockedError", err)
	}
	return b.Reason
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clientv3WithPrefix is a count-only prefix read.
func clientv3WithPrefix() []clientv3.OpOption {
	return []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}
}

// signalDefrag returns an interceptor for an agent's local client that sends
// on the returned channel when the agent sends its Defragment request.
func signalDefrag() (<-chan struct{}, grpc.UnaryClientInterceptor) {
	sent := make(chan struct{}, 1)
	return sent, func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == defragMethod {
			sent <- struct{}{}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
