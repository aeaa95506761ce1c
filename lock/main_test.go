package lock_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// TestMain fails the package if goroutines outlive the tests: sessions start
// keep-alives, Wait and the watches start goroutines that must all end.
func TestMain(m *testing.M) { etcdtest.Main(m) }

// waitTimeout bounds every wait for a condition: generous, because it is
// only reached when the condition never comes.
const waitTimeout = 30 * time.Second

// newCluster starts a three-member cluster for the test and returns it with
// a client over all its members. Both are closed by t.Cleanup.
func newCluster(t *testing.T) (*etcdtest.Cluster, *clientv3.Client) {
	t.Helper()
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	return c, c.ClientT(t)
}

// newSession returns a session of cli with the given TTL, closed by
// t.Cleanup on a fresh context (t.Context() is already cancelled then).
func newSession(t *testing.T, cli *clientv3.Client, ttl time.Duration) *lock.Session {
	t.Helper()
	s, err := lock.NewSession(t.Context(), cli, ttl)
	if err != nil {
		t.Fatalf("NewSession(%v): %v", ttl, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), lock.CleanupTimeout)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("close session: %v", err)
		}
	})
	return s
}

// eventually polls cond until it reports true, and fails the test if that
// does not happen within timeout. The last error cond returned is reported.
func eventually(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond(ctx)
		if err == nil && ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v (last error: %v)", what, timeout, err)
		case <-tick.C:
		}
	}
}

// receive returns the next value from ch, and fails the test if none comes
// within waitTimeout.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("%s: nothing within %v", what, waitTimeout)
		panic("unreachable")
	}
}

// closed waits until ch is closed, and fails the test if it is not within
// waitTimeout.
func closed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	receive(t, ch, what)
}

// keyExists reports whether key exists now (a linearizable read).
func keyExists(t *testing.T, cli *clientv3.Client, key string) bool {
	t.Helper()
	resp, err := cli.Get(t.Context(), key, clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return resp.Count > 0
}

// waitKey waits until key exists (want true) or is gone (want false).
func waitKey(t *testing.T, cli *clientv3.Client, key string, want bool) {
	t.Helper()
	eventually(t, waitTimeout, fmt.Sprintf("key %s exists = %v", key, want), func(ctx context.Context) (bool, error) {
		resp, err := cli.Get(ctx, key, clientv3.WithCountOnly())
		if err != nil {
			return false, err
		}
		return (resp.Count > 0) == want, nil
	})
}

// storeRevision returns the current revision of the store.
func storeRevision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), "/revision-probe", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("get revision: %v", err)
	}
	return resp.Header.Revision
}

// revoke revokes the lease of s from cli, as another process would.
func revoke(t *testing.T, cli *clientv3.Client, s *lock.Session) {
	t.Helper()
	if _, err := cli.Revoke(t.Context(), s.Lease()); err != nil {
		t.Fatalf("revoke lease %x: %v", int64(s.Lease()), err)
	}
}
