package coord_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// TestMain fails the package if goroutines outlive the tests: sessions start
// keep-alives, Wait and the watches start goroutines that must all end.
func TestMain(m *testing.M) { etcdtest.Main(m) }

// sessionTTL is the TTL of the sessions in these tests.
const sessionTTL = 3 * time.Second

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

// newSession returns a session of cli with sessionTTL, closed by t.Cleanup
// on a fresh context (t.Context() is already cancelled then).
func newSession(t *testing.T, cli *clientv3.Client) *lock.Session {
	t.Helper()
	s, err := lock.NewSession(t.Context(), cli, sessionTTL)
	if err != nil {
		t.Fatalf("NewSession: %v", err)
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

// storeRevision returns the current revision of the store.
func storeRevision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), "/revision-probe", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("get revision: %v", err)
	}
	return resp.Header.Revision
}
