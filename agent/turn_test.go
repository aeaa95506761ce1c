package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

const defragMethod = "/etcdserverpb.Maintenance/Defragment"

// slowFill writes enough data that a defrag takes a while on every member.
func slowFill(t testing.TB, c *etcdtest.Cluster) {
	t.Helper()
	res := fill(t, c, etcddata.FillOptions{Keys: 150_000, ValueSize: 200, Garbage: 0.3, OpsPerTxn: 1000})
	t.Logf("filled %d keys in %v", res.Keys, res.Took)
}

// holdLock takes the agents' lock the way `etcdctl lock <prefix>lock` does,
// and returns its release.
func holdLock(t testing.TB, c *etcdtest.Cluster) func() {
	t.Helper()
	s, err := concurrency.NewSession(c.ClientT(t))
	if err != nil {
		t.Fatal(err)
	}
	mu := concurrency.NewMutex(s, testPrefix+"lock")
	if err := mu.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	return func() { _ = mu.Unlock(context.Background()); _ = s.Close() }
}

// waitAnnounced waits until an agent of member id announces state.
func waitAnnounced(t testing.TB, c *etcdtest.Cluster, id uint64, state coord.State) {
	t.Helper()
	cli := c.ClientT(t)
	waitFor(t, 30*time.Second, "announcement "+string(state), func() bool {
		anns, _, err := coord.Announcements(t.Context(), cli, coord.NewKeys(testPrefix))
		if err != nil {
			return false
		}
		for _, a := range anns {
			if a.Member == id && a.State == state {
				return true
			}
		}
		return false
	})
}

// TestLeaderWaitsForPendingFollower: while a follower's agent is pending, the
// leader's agent waits; at --leader-wait-timeout it gives up with a reason and
// has not touched its member. Once the follower has gone, the leader goes.
func TestLeaderWaitsForPendingFollower(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	l, fs := leader(t, c), followers(t, c)
	release := holdLock(t, c)

	fa := newTestAgent(t, c, fs[0], "true")
	la := newTestAgent(t, c, l, "true", withConfig(func(c *Config) { c.LeaderWaitTimeout = time.Second }))
	fdone := make(chan error, 1)
	go func() { fdone <- fa.RunOnce(t.Context()) }()
	waitAnnounced(t, c, fs[0].ID, coord.StatePending)

	err := la.RunOnce(t.Context())
	if got := blockedReason(t, err); got != ReasonLeaderWait {
		t.Fatalf("leader's RunOnce reason = %q, want %q (err %v)", got, ReasonLeaderWait, err)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Fatalf("defrags while the lock was held: %v", ds)
	}
	if got := la.LastReport().Decision; got != DecisionSkipped {
		t.Errorf("leader decision = %q, want %q", got, DecisionSkipped)
	}

	release()
	if err := <-fdone; err != nil {
		t.Fatalf("follower's RunOnce: %v", err)
	}
	// The follower's agent keeps running as a daemon: it answers the
	// leader's next request at once (cooldown), the other follower has no
	// agent and is waited for one lock TTL.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	fa.cfg.Cooldown = time.Hour
	served := make(chan error, 1)
	go func() { served <- fa.Serve(ctx, Schedule{Every: time.Hour}) }()
	la.cfg.LeaderWaitTimeout = time.Minute
	if err := la.RunOnce(t.Context()); err != nil {
		t.Fatalf("leader's second RunOnce: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	ds := c.Defrags()
	checkOneAtATime(t, ds)
	checkLeaderLast(t, ds, l.ID)
}

// TestLeaderAfterFollowersDone: both followers' agents defragmented their
// members and exited before the leader's agent started. The leader's agent
// finds no agent beside them, but their last/ records within the cooldown:
// it goes at once instead of waiting one --lock-ttl for them (a lease TTL
// of an hour here, so waiting would end only at --leader-wait-timeout,
// 20 s, and log that it went on without them).
func TestLeaderAfterFollowersDone(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	l, fs := leader(t, c), followers(t, c)
	for _, f := range fs {
		fa := newTestAgent(t, c, f, "true")
		if err := fa.RunOnce(t.Context()); err != nil {
			t.Fatalf("agent of %s: %v", f.Name, err)
		}
		// As with --once: the process exits, its session and
		// announcement end with it.
		if err := fa.Close(t.Context()); err != nil {
			t.Fatalf("close the agent of %s: %v", f.Name, err)
		}
	}
	var logs syncBuffer
	la := newTestAgent(t, c, l, "true",
		withConfig(func(c *Config) { c.Cooldown, c.LockTTL, c.LeaderWaitTimeout = time.Minute, time.Hour, 20*time.Second }),
		func(s *agentSetup) { s.deps.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	if err := la.RunOnce(t.Context()); err != nil {
		t.Fatalf("leader's RunOnce: %v\n%s", err, logs.String())
	}
	if out := logs.String(); strings.Contains(out, "leader waits for followers") || strings.Contains(out, "leader goes on") {
		t.Errorf("the leader's agent waited for followers that were done:\n%s", out)
	}
	ds := c.Defrags()
	checkOneAtATime(t, ds)
	checkLeaderLast(t, ds, l.ID)
	if len(ds) != 3 {
		t.Errorf("%d defrags, want 3: %v", len(ds), ds)
	}
}

// TestDefragOutlivesClientTimeout: the Defragment request is cut short on the
// client side while etcd goes on (the interceptor lets the request reach etcd
// and returns DeadlineExceeded once etcd logs that it defragments). The agent
// keeps the lock until its member answers again, so the next agent starts
// only after the defrag ended.
func TestDefragOutlivesClientTimeout(t *testing.T) {
	c := newCluster(t, etcdtest.Options{MaxTxnOps: 1000})
	slowFill(t, c)
	fs := followers(t, c)

	sent := make(chan struct{}, 1)
	a := newTestAgent(t, c, fs[0], "true", withLocalInterceptor(cutShortOnceRunning(t, c, fs[0], sent)))
	b := newTestAgent(t, c, fs[1], "true")

	adone := make(chan error, 1)
	go func() { adone <- a.RunOnce(t.Context()) }()
	<-sent
	if err := b.RunOnce(t.Context()); err != nil {
		t.Fatalf("second agent: %v", err)
	}
	if err := <-adone; err != nil {
		t.Fatalf("first agent: %v", err)
	}
	ds := c.Defrags()
	checkEachOnce(t, ds, fs)
	checkOneAtATime(t, ds)
	if len(ds) == 2 && ds[0].MemberID != fs[0].ID {
		t.Errorf("first defrag was of %x, want %s's", ds[0].MemberID, fs[0].Name)
	}
}

// cutShortOnceRunning is an interceptor for the Defragment request: it sends
// the request on in the background, waits until etcd logs that member m
// defragments, signals sent, and returns DeadlineExceeded — a client-side
// timeout while etcd goes on.
func cutShortOnceRunning(t testing.TB, c *etcdtest.Cluster, m *etcdtest.Member, sent chan<- struct{}) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != defragMethod {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		n := len(c.Defrags())
		go func() { _ = invoker(context.WithoutCancel(ctx), method, req, new(pb.DefragmentResponse), cc, opts...) }()
		deadline := time.Now().Add(30 * time.Second)
		for !defragStarted(c.Defrags()[n:], m.ID) {
			if time.Now().After(deadline) {
				t.Errorf("etcd did not start the defrag of %s within 30s", m.Name)
				break
			}
			time.Sleep(time.Millisecond)
		}
		sent <- struct{}{}
		return status.Error(codes.DeadlineExceeded, "cut short by the test while etcd defragments")
	}
}

func defragStarted(ds []etcdtest.Defrag, id uint64) bool {
	for _, d := range ds {
		if d.MemberID == id {
			return true
		}
	}
	return false
}

// TestDefragRequestNeverRan: the Defragment request times out before etcd
// ran it. The member answers at once, but its file did not shrink: the agent
// reports a failure instead of a success.
func TestDefragRequestNeverRan(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5})
	m := followers(t, c)[0]
	drop := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == defragMethod {
			return status.Error(codes.DeadlineExceeded, "dropped by the test before it reached etcd")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	a := newTestAgent(t, c, m, "true", withLocalInterceptor(drop))
	err := a.RunOnce(t.Context())
	if got := blockedReason(t, err); got != ReasonUnavailable {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonUnavailable, err)
	}
	if !strings.Contains(err.Error(), "did not shrink") {
		t.Errorf("error %q does not say why the defrag is not counted", err)
	}
	if got := testutil.ToFloat64(a.metrics.defrags.WithLabelValues(resultSuccess)); got != 0 {
		t.Errorf("defragmentations_total{result=success} = %v, want 0", got)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("etcd defragmented: %v", ds)
	}
}

// TestAgentVanishesMidDefrag: an agent's clients are closed while its member
// defragments, and its session is not revoked (the process died). The next
// agent waits for the lease to expire, finds the in-flight record, waits for
// that member to answer, removes the record and proceeds.
func TestAgentVanishesMidDefrag(t *testing.T) {
	c := newCluster(t, etcdtest.Options{MaxTxnOps: 1000})
	slowFill(t, c)
	fs := followers(t, c)
	keys := coord.NewKeys(testPrefix)

	sent, signal := signalDefrag()
	a := newTestAgent(t, c, fs[0], "true", withLocalInterceptor(signal))
	b := newTestAgent(t, c, fs[1], "true")

	adone := make(chan error, 1)
	go func() { adone <- a.RunOnce(t.Context()) }()
	<-sent
	a.vanish()
	<-adone

	cli := c.ClientT(t)
	resp, err := cli.Get(t.Context(), keys.Defrag(fs[0].ID))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("in-flight record of the vanished agent's member: %d keys, want 1", len(resp.Kvs))
	}

	if err := b.RunOnce(t.Context()); err != nil {
		t.Fatalf("next agent: %v", err)
	}
	resp, err = cli.Get(t.Context(), keys.Defrags(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("in-flight records left: %d, want 0", len(resp.Kvs))
	}
	ds := c.Defrags()
	checkEachOnce(t, ds, fs)
	checkOneAtATime(t, ds)
}

// vanish closes the agent's clients without ending its session, as if the
// process died: the lease stays until its TTL runs out.
func (a *testAgent) vanish() {
	a.local.Close()
	a.cluster.Close()
}

// TestLostLeaseStopsAgent: an agent whose lease ends while it waits for the
// lock gives up (session_lost) and never defragments.
func TestLostLeaseStopsAgent(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fs := followers(t, c)
	release := holdLock(t, c)
	defer release()

	a := newTestAgent(t, c, fs[0], "true")
	done := make(chan error, 1)
	go func() { done <- a.RunOnce(t.Context()) }()
	waitAnnounced(t, c, fs[0].ID, coord.StatePending)

	lease := a.presence.session().Lease()
	if _, err := c.ClientT(t).Revoke(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if got := blockedReason(t, err); got != ReasonSessionLost {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonSessionLost, err)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("defrags after the lease was lost: %v", ds)
	}
	if !errors.Is(err, lock.ErrSessionExpired) {
		t.Errorf("err = %v, want it to wrap lock.ErrSessionExpired", err)
	}
}

// TestLeaseEndsMidDefrag: the agent's lease ends while its member
// defragments (a defrag longer than --lock-ttl, or a partition). The next
// agent gets the lock at once, finds the in-flight record and waits for that
// member before its own defrag, so the two never overlap.
func TestLeaseEndsMidDefrag(t *testing.T) {
	c := newCluster(t, etcdtest.Options{MaxTxnOps: 1000})
	slowFill(t, c)
	fs := followers(t, c)

	sent, signal := signalDefrag()
	a := newTestAgent(t, c, fs[0], "true", withLocalInterceptor(signal))
	b := newTestAgent(t, c, fs[1], "true")

	adone := make(chan error, 1)
	go func() { adone <- a.RunOnce(t.Context()) }()
	<-sent
	lease := a.presence.session().Lease()
	// Not through the member that defragments: it applies nothing meanwhile.
	if _, err := c.ClientT(t, fs[1].ClientURL).Revoke(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	bStart := time.Now()
	if err := b.RunOnce(t.Context()); err != nil {
		t.Fatalf("next agent: %v", err)
	}
	if err := <-adone; err != nil {
		t.Fatalf("agent that lost its lease: %v", err)
	}
	// Whoever removed the in-flight record, the first defrag is recorded:
	// its cooldown must hold.
	rec, found, err := coord.Get[coord.Last](t.Context(), c.ClientT(t), coord.NewKeys(testPrefix).Last(fs[0].ID))
	if err != nil || !found || rec.Value.Result != resultSuccess {
		t.Errorf("last record of the member whose agent lost its lease: found %v, err %v, %+v", found, err, rec.Value)
	}
	ds := c.Defrags()
	checkEachOnce(t, ds, fs)
	checkOneAtATime(t, ds)
	for _, d := range ds {
		if d.MemberID == fs[0].ID && d.End.Before(bStart) {
			t.Fatalf("the first defrag (%v) ended before the next agent started (%v): the test did not exercise the wait", d, bStart)
		}
	}
}

// TestUnlockFailureReleasesLock: the agent cannot delete its lock key (the
// connection it takes runs to a member that stopped answering, as a
// SIGSTOPped member's does until gRPC's keep-alive gives up). It must not
// keep the lock alive with its session: it abandons the session, the key
// expires with the lease within one --lock-ttl, the next agent gets the
// lock, and the agent's next cycle starts a new session.
func TestUnlockFailureReleasesLock(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fs := followers(t, c)
	lockKeys := coord.NewKeys(testPrefix).Lock()
	var refused atomic.Int64
	var broken atomic.Bool
	broken.Store(true)
	// The lock is released by a delete of its key: alone, or in the
	// transaction that records the turn.
	unlocks := func(req any) bool {
		switch r := req.(type) {
		case *pb.DeleteRangeRequest:
			return strings.HasPrefix(string(r.Key), lockKeys)
		case *pb.TxnRequest:
			for _, op := range r.Success {
				if d := op.GetRequestDeleteRange(); d != nil && strings.HasPrefix(string(d.Key), lockKeys) {
					return true
				}
			}
		}
		return false
	}
	failUnlock := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if broken.Load() && unlocks(req) {
			refused.Add(1)
			return status.Error(codes.Unavailable, "injected: keepalive ping failed to receive ACK within timeout")
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	a := newTestAgent(t, c, fs[0], "true", withClusterInterceptor(failUnlock))
	b := newTestAgent(t, c, fs[1], "true")

	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatalf("agent whose unlock fails: %v", err)
	}
	if refused.Load() < 2 {
		t.Fatalf("unlock attempted %d times, want retries", refused.Load())
	}
	dropped := a.presence.session() == nil
	if !dropped {
		t.Fatal("the session that holds the lock key is still kept alive")
	}
	cli := c.ClientT(t)
	waitFor(t, 15*time.Second, "the lock key expiring with the abandoned lease", func() bool {
		resp, err := cli.Get(t.Context(), lockKeys, clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})
	if err := b.RunOnce(t.Context()); err != nil {
		t.Fatalf("next agent: %v", err)
	}
	checkEachOnce(t, c.Defrags(), fs)

	// Once the connection works again, the next cycle runs on a new
	// session and keeps it.
	broken.Store(false)
	if err := a.RunOnce(t.Context()); err != nil && ReasonOf(err) == "" {
		t.Fatalf("next cycle: %v", err)
	}
	renewed := a.presence.session() != nil
	if !renewed {
		t.Error("the next cycle did not start a new session")
	}
}

// TestVerifyHashMismatch: after the defrag, the peer's HashKV differs from
// the member's (here the peer's answer is altered on its way to the agent;
// on a real cluster, corruption). The cycle fails with hash_mismatch, counts
// defragmentations_total{result="verify_failed"}, says so in last/, and
// the error names both members and their hashes.
func TestVerifyHashMismatch(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fs := followers(t, c)
	self := strings.TrimPrefix(fs[0].ClientURL, "http://")
	var altered atomic.Int64
	corrupt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		// The target names the client's first endpoint whatever member a
		// per-endpoint request goes to; the peer address is the truth.
		var p grpcpeer.Peer
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
		if r, ok := reply.(*pb.HashKVResponse); ok && err == nil && p.Addr != nil && p.Addr.String() != self {
			r.Hash++
			altered.Add(1)
		}
		return err
	}
	a := newTestAgent(t, c, fs[0], "true", withLocalInterceptor(corrupt))
	err := a.RunOnce(t.Context())
	if got := ReasonOf(err); got != ReasonHashMismatch {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonHashMismatch, err)
	}
	if altered.Load() == 0 {
		t.Fatal("no peer HashKV went through the interceptor: the test did not exercise the check")
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("member %x has", fs[0].ID)) {
		t.Errorf("error %q does not name the member", err)
	}
	if got := testutil.ToFloat64(a.metrics.defrags.WithLabelValues(resultVerifyFailed)); got != 1 {
		t.Errorf("defragmentations_total{verify_failed} = %v, want 1", got)
	}
	if got := a.LastReport().Decision; got != DecisionFailed {
		t.Errorf("decision = %q, want %q", got, DecisionFailed)
	}
	rec, found, err := coord.Get[coord.Last](t.Context(), c.ClientT(t), coord.NewKeys(testPrefix).Last(fs[0].ID))
	if err != nil || !found {
		t.Fatalf("last record: found %v, err %v", found, err)
	}
	if rec.Value.Result != resultVerifyFailed {
		t.Errorf("last record result = %q, want %q", rec.Value.Result, resultVerifyFailed)
	}
	checkEachOnce(t, c.Defrags(), fs[:1])
}

// TestCheckWithoutItsReference: the member before in the round recorded
// its check pending and never finished it (its agent died). The next
// member's check waits for it no longer than referenceWaitFloor (its own
// defrag is short here), then hashes itself and that member again, and
// passes.
func TestCheckWithoutItsReference(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5})
	fs := followers(t, c)
	cli := c.ClientT(t)
	// A revision above the fill's compaction, as a check's always is.
	resp, err := cli.Put(t.Context(), "/after-the-compaction", "x")
	if err != nil {
		t.Fatal(err)
	}
	keys := coord.NewKeys(testPrefix)
	rev := resp.Header.Revision
	dead, err := json.Marshal(coord.Last{Member: fmt.Sprintf("%x", fs[0].ID), Start: time.Now(), End: time.Now(), Result: resultSuccess,
		Verify: coord.VerifyPending, Check: &coord.Check{Revision: rev}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), keys.Last(fs[0].ID), string(dead)); err != nil {
		t.Fatal(err)
	}
	before := hashScans(t)
	if err := newTestAgent(t, c, fs[1], "true").RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec, found, err := coord.Get[coord.Last](t.Context(), cli, keys.Last(fs[1].ID))
	if err != nil || !found {
		t.Fatalf("last record: found %v, err %v", found, err)
	}
	if l := rec.Value; l.Verify != coord.VerifyOK || l.Check == nil || l.Check.Revision != rev {
		t.Errorf("verify %q, check %+v; want %q at the round's revision %d", l.Verify, l.Check, coord.VerifyOK, rev)
	}
	if scans := hashScans(t) - before; scans != 2 {
		t.Errorf("etcd scanned its key space for HashKV %d times during the check, want 2 (the member and the one before, again)", scans)
	}
}

// TestVerifyMismatchWithTheRecordedHash: the second member of a round is
// compared with the hash the first recorded after its defrag; when its own
// HashKV differs (altered on its way to the agent), the cycle fails with
// hash_mismatch, naming both members.
func TestVerifyMismatchWithTheRecordedHash(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fs := followers(t, c)
	if err := newTestAgent(t, c, fs[0], "true").RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	self := strings.TrimPrefix(fs[1].ClientURL, "http://")
	var altered atomic.Int64
	corrupt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var p grpcpeer.Peer
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
		if r, ok := reply.(*pb.HashKVResponse); ok && err == nil && p.Addr != nil && p.Addr.String() == self {
			r.Hash++
			altered.Add(1)
		}
		return err
	}
	err := newTestAgent(t, c, fs[1], "true", withLocalInterceptor(corrupt)).RunOnce(t.Context())
	if got := ReasonOf(err); got != ReasonHashMismatch {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonHashMismatch, err)
	}
	if n := altered.Load(); n != 1 {
		t.Errorf("the member was hashed %d times, want once (against the recorded hash, no peer hashed)", n)
	}
	for _, m := range fs[:2] {
		if !strings.Contains(err.Error(), fmt.Sprintf("member %x has", m.ID)) {
			t.Errorf("error %q does not name member %x", err, m.ID)
		}
	}
}

// TestVerifyReadsTheDefraggedFile: etcd keeps the hash of every recent
// compaction's revision and answers HashKV at such a revision from memory
// (mvcc hashStorage.HashByRev, etcd 3.5.5 on), so a check at that revision
// would compare hashes computed before the defrag. Here the cluster is
// compacted at its newest revision with nothing written after it, as
// etcd-defrag's default compaction leaves it; the agent's own writes under
// the lock put the revision it checks past the compaction's. Judged from
// etcd's own account: its HashKV duration histogram, observed only when a
// member scans its key space, counts the peer's hash and the member's own.
func TestVerifyReadsTheDefraggedFile(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5})
	cli := c.ClientT(t)
	resp, err := cli.Get(t.Context(), "/")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitCompacted(t.Context(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	before := hashScans(t)
	a := newTestAgent(t, c, followers(t, c)[0], "true", withConfig(func(c *Config) { c.Once = true }))
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := a.LastReport().Decision; got != DecisionDefragmented {
		t.Fatalf("decision = %q, want %q", got, DecisionDefragmented)
	}
	if scans := hashScans(t) - before; scans < 2 {
		t.Errorf("etcd scanned its key space for HashKV %d times during the cycle, want 2 (the peer's hash and the member's own): the check compared hashes stored at the compaction", scans)
	}
}

// TestRoundHashesEachMemberOnce: in a round the members after the first
// are hashed at the first one's check revision and compared with the hash
// the member before them recorded, so etcd scans its key space n+1 times
// for HashKV (each member once after its defrag, and one peer during the
// first defrag), not 2n; every check passes, at one revision.
func TestRoundHashesEachMemberOnce(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5})
	before := hashScans(t)
	var agents []*testAgent
	for _, m := range c.Members() {
		agents = append(agents, newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.Once = true })))
	}
	for i, err := range runAll(t.Context(), agents...) {
		if err != nil {
			t.Fatalf("agent of %s: %v", agents[i].member.Name, err)
		}
	}
	keys := coord.NewKeys(testPrefix)
	var rev int64
	for _, m := range c.Members() {
		rec, found, err := coord.Get[coord.Last](t.Context(), c.ClientT(t), keys.Last(m.ID))
		if err != nil || !found {
			t.Fatalf("last record of %s: found %v, err %v", m.Name, found, err)
		}
		l := rec.Value
		if l.Verify != coord.VerifyOK || l.Check == nil {
			t.Fatalf("%s: verify %q, check %+v; want %q with the check's revision and hash", m.Name, l.Verify, l.Check, coord.VerifyOK)
		}
		if rev != 0 && l.Check.Revision != rev {
			t.Errorf("%s hashed at revision %d, another member at %d: want one revision for the round", m.Name, l.Check.Revision, rev)
		}
		rev = l.Check.Revision
	}
	if scans, want := hashScans(t)-before, uint64(len(c.Members())+1); scans != want {
		t.Errorf("etcd scanned its key space for HashKV %d times in the round, want %d (each member once, one peer during the first defrag)", scans, want)
	}
}

// TestCheckAtACompactedRevision: a compaction lands exactly on the revision
// the round's checks share, after the first member's check and before the
// next member's. etcd then answers HashKV there from the hash it stored
// while compacting — before that member's defrag —, and it matches the
// first member's hash; the check must see the compaction and hash both
// members again at a fresh revision.
func TestCheckAtACompactedRevision(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5})
	fs := followers(t, c)
	keys := coord.NewKeys(testPrefix)
	cli := c.ClientT(t)
	check := func(m *etcdtest.Member) coord.Check {
		t.Helper()
		a := newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.Once = true }))
		if err := a.RunOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		rec, found, err := coord.Get[coord.Last](t.Context(), cli, keys.Last(m.ID))
		if err != nil || !found {
			t.Fatalf("last record of %s: found %v, err %v", m.Name, found, err)
		}
		if rec.Value.Verify != coord.VerifyOK || rec.Value.Check == nil {
			t.Fatalf("%s: verify %q, check %+v; want %q", m.Name, rec.Value.Verify, rec.Value.Check, coord.VerifyOK)
		}
		return *rec.Value.Check
	}
	first := check(fs[0])
	if _, err := cli.Compact(t.Context(), first.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitCompacted(t.Context(), first.Revision); err != nil {
		t.Fatal(err)
	}
	before := hashScans(t)
	second := check(fs[1])
	if second.Revision <= first.Revision {
		t.Errorf("%s's check at revision %d, compacted meanwhile; want a fresh revision above it", fs[1].Name, second.Revision)
	}
	if scans := hashScans(t) - before; scans < 2 {
		t.Errorf("etcd scanned its key space for HashKV %d times during the second check, want 2 (both members at a fresh revision)", scans)
	}
}

// hashScans is how many times the in-process members scanned their key
// space for HashKV (etcd_mvcc_hash_rev_duration_seconds' count; the
// members of a test share the default registry).
func hashScans(t testing.TB) uint64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_mvcc_hash_rev_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("etcd_mvcc_hash_rev_duration_seconds is not registered")
	return 0
}

// TestNeediestFirst: four followers whose files hold three amounts of
// garbage ask for a turn at once (their agents start while the test holds
// the lock); by the members' own log lines they are defragmented nearest
// their quota first — the same data, so the fullest file first —, one at a
// time, the leader last.
func TestNeediestFirst(t *testing.T) {
	c := newCluster(t, etcdtest.Options{Members: 5})
	l, fs := leader(t, c), followers(t, c)
	cli := c.ClientT(t)
	defrag := func(m *etcdtest.Member) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if _, err := cli.Defragment(ctx, m.ClientURL); err != nil {
			t.Fatal(err)
		}
	}
	garbage := func(stage string, mib int) {
		fill(t, c, etcddata.FillOptions{Prefix: "/garbage/" + stage + "/", Keys: mib * 1024, ValueSize: 1024, Garbage: 1})
	}
	// Live data, then 8 MiB of garbage on every member; fs[0] gives its
	// garbage back before 4 MiB more are written, fs[1] before 1 MiB more.
	// Each file keeps its high-water mark: fs[2] and fs[3] have about 8 MiB
	// to reclaim, fs[0] 4 and fs[1] 1.
	fill(t, c, etcddata.FillOptions{Keys: 2048, ValueSize: 1024})
	garbage("a", 8)
	defrag(fs[0])
	garbage("b", 4)
	defrag(fs[1])
	garbage("c", 1)

	release := holdLock(t, c)
	const src = "dbSizeFree > 512*1024"
	agents := []*testAgent{newTestAgent(t, c, l, src)}
	for _, f := range fs {
		agents = append(agents, newTestAgent(t, c, f, src))
	}
	n := len(c.Defrags())
	done := make(chan []error, 1)
	go func() { done <- runAll(t.Context(), agents...) }()
	for _, f := range fs {
		waitAnnounced(t, c, f.ID, coord.StatePending)
	}
	// What each follower needs, as the agents announced it.
	anns, _, err := coord.Announcements(t.Context(), cli, coord.NewKeys(testPrefix))
	if err != nil {
		t.Fatal(err)
	}
	needs := map[uint64]need{}
	for _, a := range anns {
		if a.State == coord.StatePending && !a.Leader {
			needs[a.Member] = need{usage: a.DBQuotaUsage, free: a.DBSizeFree, id: a.Member}
		}
	}
	t.Logf("needs: %+v", needs)
	release()
	for i, err := range <-done {
		if err != nil {
			t.Errorf("agent of %s: %v", agents[i].member.Name, err)
		}
	}

	ds := defragsSince(c, n)
	checkOneAtATime(t, ds)
	checkEachOnce(t, ds, c.Members())
	checkLeaderLast(t, ds, l.ID)
	// Followers in the order etcd logged their defrags: each needs at
	// least as much as the next, within 256 KiB (a tie: the files of fs[2]
	// and fs[3] differ by a few pages).
	var order []need
	for _, d := range ds {
		if nd, ok := needs[d.MemberID]; ok {
			order = append(order, nd)
		}
	}
	if len(order) != len(fs) {
		t.Fatalf("followers defragmented: %d of %d (%v)", len(order), len(fs), ds)
	}
	for i := 1; i < len(order); i++ {
		if order[i].free > order[i-1].free+256<<10 {
			t.Errorf("follower %x (%d bytes to reclaim) went before %x (%d): defrags %v", order[i-1].id, order[i-1].free, order[i].id, order[i].free, ds)
		}
	}
	// The classes are far apart: the two 8 MiB files first, 1 MiB last.
	if order[len(order)-1].id != fs[1].ID || order[len(order)-2].id != fs[0].ID {
		t.Errorf("fs[0] (%x) and fs[1] (%x) were not the last followers: defrags %v", fs[0].ID, fs[1].ID, ds)
	}
}
