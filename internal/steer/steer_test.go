package steer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/steer"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// requestTimeout bounds each request of the tests: far longer than an
// attempt (steer.MinAttempt), far shorter than the held defrags.
const requestTimeout = 5 * time.Second

// newClient returns a steer.Client over the given members of c, in that
// order of preference (each answers one request first), closed at cleanup.
func newClient(t *testing.T, c *etcdtest.Cluster, ms ...*etcdtest.Member) *steer.Client {
	t.Helper()
	cl := steer.New(func(urls []string) (*clientv3.Client, error) { return c.Client(t.Context(), urls...) }, 0)
	t.Cleanup(func() { _ = cl.Close() })
	urls := map[uint64][]string{}
	for _, m := range ms {
		urls[m.ID] = []string{m.ClientURL}
		if err := cl.SetMembers(urls, 0); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
		_, err := cl.Get(ctx, "/steer-test/warm-up")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	return cl
}

// holdDefrag fills the cluster past etcddata.MinHeldSnapshot, holds a
// snapshot of m and defragments m in the background: the defrag runs until
// the returned release is called (the test's cleanup calls it too). It
// returns once etcd logs that m defragments.
func holdDefrag(t *testing.T, c *etcdtest.Cluster, m *etcdtest.Member) (started time.Time, release func()) {
	t.Helper()
	cli := c.ClientT(t)
	if _, err := etcddata.Fill(t.Context(), cli, etcddata.FillOptions{Keys: 160, ValueSize: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	h, err := c.HoldSnapshot(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Release)
	done := make(chan error, 1)
	go func() {
		_, err := cli.Defragment(context.WithoutCancel(t.Context()), m.ClientURL)
		done <- err
	}()
	t.Cleanup(func() {
		h.Release()
		if err := <-done; err != nil {
			t.Errorf("defragment %s: %v", m.Name, err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		for _, d := range c.Defrags() {
			if d.MemberID == m.ID && d.Running() {
				return d.Start, h.Release
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("etcd did not start defragmenting %s", m.Name)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// followers returns the two followers of a three-member cluster.
func followers(t *testing.T, c *etcdtest.Cluster) (*etcdtest.Member, *etcdtest.Member) {
	t.Helper()
	l, err := c.Leader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var fs []*etcdtest.Member
	for _, m := range c.Members() {
		if m.ID != l.ID {
			fs = append(fs, m)
		}
	}
	return fs[0], fs[1]
}

// stillRunning fails the test unless m's defrag that started at start is
// still running: what the test did happened while m defragmented.
func stillRunning(t *testing.T, c *etcdtest.Cluster, m *etcdtest.Member, start time.Time) {
	t.Helper()
	for _, d := range c.Defrags() {
		if d.MemberID == m.ID && d.Start.Equal(start) && !d.Running() {
			t.Fatalf("the defrag of %s ended (%v) before the test was done: it tested nothing", m.Name, d)
		}
	}
}

// TestSteersAroundLongDefrag: member A, a follower, defragments, held for as
// long as the test needs, and it comes first in the client's order. (A
// leader that defragments is another matter: etcd renews no lease while its
// leader has entries to apply.) Every request the
// agents send — reads, puts, transactions, deletes, lease grants, renewals,
// time-to-live and revokes — is answered through B, each within its own
// bound, while A still defragments; the defrag is released only afterwards,
// so a request that waited for A would have failed. A session with a 2 s
// TTL lives through three TTLs of A's defrag: its renewals go through B.
func TestSteersAroundLongDefrag(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	a, b := followers(t, c)
	cl := newClient(t, c, a, b)
	start, release := holdDefrag(t, c, a)

	const ttl = 2 * time.Second
	sess, err := lock.NewSession(t.Context(), cl, ttl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), lock.CleanupTimeout)
		defer cancel()
		_ = sess.Close(ctx)
	})

	requests := []struct {
		name string
		do   func(ctx context.Context) error
	}{
		{"put", func(ctx context.Context) error {
			_, err := cl.Put(ctx, "/steer-test/k", "v", clientv3.WithLease(sess.Lease()))
			return err
		}},
		{"get", func(ctx context.Context) error {
			resp, err := cl.Get(ctx, "/steer-test/k")
			if err == nil && len(resp.Kvs) != 1 {
				err = fmt.Errorf("%d keys, want 1", len(resp.Kvs))
			}
			return err
		}},
		{"txn", func(ctx context.Context) error {
			resp, err := cl.Txn(ctx).
				If(clientv3.Compare(clientv3.Value("/steer-test/k"), "=", "v")).
				Then(clientv3.OpPut("/steer-test/k2", "v2")).
				Commit()
			if err == nil && !resp.Succeeded {
				err = errors.New("transaction did not succeed")
			}
			return err
		}},
		{"delete", func(ctx context.Context) error {
			_, err := cl.Delete(ctx, "/steer-test/k2")
			return err
		}},
		{"lease", func(ctx context.Context) error {
			g, err := cl.Grant(ctx, 5)
			if err != nil {
				return err
			}
			if _, err := cl.KeepAliveOnce(ctx, g.ID); err != nil {
				return err
			}
			if ttl, err := cl.TimeToLive(ctx, g.ID); err != nil || ttl.TTL <= 0 {
				return errors.Join(err, fmt.Errorf("time to live %d", ttl.TTL))
			}
			_, err = cl.Revoke(ctx, g.ID)
			return err
		}},
	}
	for _, r := range requests {
		ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
		err := r.do(ctx)
		cancel()
		if err != nil {
			t.Errorf("%s while %s defragments: %v", r.name, a.Name, err)
		}
	}

	// Three TTLs of A's defrag, by etcd's log clock.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for time.Since(start) < 3*ttl {
		select {
		case <-sess.Done():
			t.Fatalf("the session ended %v into %s's defrag", time.Since(start), a.Name)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	rctx, rcancel := context.WithTimeout(t.Context(), requestTimeout)
	left, err := sess.Remaining(rctx)
	rcancel()
	if err != nil {
		t.Fatalf("the session's lease after three TTLs of %s's defrag: %v", a.Name, err)
	}
	stillRunning(t, c, a, start)
	release()
	t.Logf("the session's lease had %v left after %v of %s's defrag", left, time.Since(start).Round(time.Millisecond), a.Name)
}

// TestSteersAroundStoppedMember: a stopped member comes first in the
// client's order; requests go to the next one.
func TestSteersAroundStoppedMember(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	ms := c.Members()
	cl := newClient(t, c, ms[0], ms[1])
	ms[0].Stop()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
		_, err := cl.Put(ctx, fmt.Sprintf("/steer-test/%d", i), "v")
		cancel()
		if err != nil {
			t.Errorf("put %d with %s stopped: %v", i, ms[0].Name, err)
		}
	}
}

// TestFinalErrorNotRetried: an answer that is an error of the request
// itself (here a compacted revision) is returned as it is, not sent to
// another member.
func TestFinalErrorNotRetried(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	ms := c.Members()
	cl := newClient(t, c, ms[0], ms[1])
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout)
	defer cancel()
	var rev int64
	for i := range 3 {
		resp, err := cl.Put(ctx, "/steer-test/compacted", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := cl.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	_, err := cl.Get(ctx, "/steer-test/compacted", clientv3.WithRev(rev-1))
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Errorf("get at a compacted revision: err = %v, want %v", err, rpctypes.ErrCompacted)
	}
}

func TestRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"attempt deadline", context.DeadlineExceeded, true},
		{"wrapped attempt deadline", fmt.Errorf("member 1: %w", context.DeadlineExceeded), true},
		{"canceled", context.Canceled, true},
		{"grpc deadline", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), true},
		{"unavailable", status.Error(codes.Unavailable, "connection refused"), true},
		{"no leader", rpctypes.ErrNoLeader, true},
		{"request timed out", rpctypes.ErrTimeout, true},
		{"applied index", rpctypes.ErrTimeoutWaitAppliedIndex, true},
		{"invalid auth token", rpctypes.ErrInvalidAuthToken, true},
		{"etcd 3.4 deadline", status.Error(codes.Unknown, "context deadline exceeded"), true},
		{"compacted", rpctypes.ErrCompacted, false},
		{"lease not found", rpctypes.ErrLeaseNotFound, false},
		{"permission denied", rpctypes.ErrPermissionDenied, false},
		{"no space", rpctypes.ErrNoSpace, false},
		{"other unknown", status.Error(codes.Unknown, "boom"), false},
		{"plain", errors.New("boom"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := steer.Retryable(tc.err); got != tc.want {
				t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
