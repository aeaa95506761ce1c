package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// sessionTTL is the TTL of the sessions in the mutex tests: long enough that
// a keep-alive is never late on a loaded machine, short enough that Done
// closes soon after a revoke (the client learns of it at its next
// keep-alive, every TTL/3).
const sessionTTL = 3 * time.Second

// lockT locks m and fails the test if it cannot.
func lockT(t *testing.T, m *lock.Mutex) {
	t.Helper()
	if err := m.Lock(t.Context()); err != nil {
		t.Fatalf("Lock %s: %v", m.Key(), err)
	}
}

// unlockT unlocks m and fails the test if it cannot.
func unlockT(t *testing.T, m *lock.Mutex) {
	t.Helper()
	if err := m.Unlock(t.Context()); err != nil {
		t.Fatalf("Unlock %s: %v", m.Key(), err)
	}
}

// holderT returns the head of the queue under pfx.
func holderT(t *testing.T, cli *clientv3.Client, pfx string) string {
	t.Helper()
	h, err := lock.Holder(t.Context(), cli, pfx)
	if err != nil {
		t.Fatalf("Holder(%s): %v", pfx, err)
	}
	return h
}

func TestMutexExclusion(t *testing.T) {
	t.Parallel()
	c, _ := newCluster(t)
	const (
		workers = 6
		rounds  = 4
		pfx     = "/exclusion/lock/"
		counter = "/exclusion/counter"
	)
	var (
		inside, overlaps atomic.Int32
		wg               sync.WaitGroup
	)
	ms := c.Members()
	for w := range workers {
		// Each worker has its own session, and its own client of one member.
		cli := c.ClientT(t, ms[w%len(ms)].ClientURL)
		m := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
		wg.Go(func() {
			for range rounds {
				if err := m.Lock(t.Context()); err != nil {
					t.Errorf("worker %d: Lock: %v", w, err)
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				// A read-modify-write that loses updates unless the holder
				// alone writes, and only while it holds the lock.
				resp, err := cli.Get(t.Context(), counter)
				if err != nil {
					t.Errorf("worker %d: get counter: %v", w, err)
					return
				}
				v := 0
				if len(resp.Kvs) > 0 {
					v, _ = strconv.Atoi(string(resp.Kvs[0].Value))
				}
				if _, err := m.Fenced(t.Context(), clientv3.OpPut(counter, strconv.Itoa(v+1))); err != nil {
					t.Errorf("worker %d: Fenced: %v", w, err)
					return
				}
				inside.Add(-1)
				if err := m.Unlock(t.Context()); err != nil {
					t.Errorf("worker %d: Unlock: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := overlaps.Load(); got != 0 {
		t.Errorf("entries into the critical section while another worker was inside = %d, want 0", got)
	}
	resp, err := c.ClientT(t).Get(t.Context(), counter)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		t.Fatalf("counter %s missing", counter)
	}
	if got, want := string(resp.Kvs[0].Value), strconv.Itoa(workers*rounds); got != want {
		t.Errorf("counter = %s, want %s (one fenced increment per turn)", got, want)
	}
	if h := holderT(t, c.ClientT(t), pfx); h != "" {
		t.Errorf("Holder after every worker unlocked = %q, want \"\"", h)
	}
}

func TestMutexFIFO(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const (
		pfx     = "/fifo/lock/"
		waiters = 4
	)
	holder := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	lockT(t, holder)

	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
	)
	for i := range waiters {
		m := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
		key := m.Key()
		wg.Go(func() {
			if err := m.Lock(t.Context()); err != nil {
				t.Errorf("waiter %d: Lock: %v", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := m.Unlock(t.Context()); err != nil {
				t.Errorf("waiter %d: Unlock: %v", i, err)
			}
		})
		// The next waiter starts only once this one is in the queue.
		waitKey(t, cli, key, true)
	}
	if got, want := holderT(t, cli, pfx), holder.Key(); got != want {
		t.Errorf("Holder with %d waiters = %q, want %q", waiters, got, want)
	}
	unlockT(t, holder)
	wg.Wait()
	if got, want := fmt.Sprint(order), "[0 1 2 3]"; got != want {
		t.Errorf("order the waiters took the lock = %s, want %s (enqueue order)", got, want)
	}
}

func TestMutexLockTimeout(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const pfx = "/timeout/lock/"
	holder := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	lockT(t, holder)

	m := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err := m.Lock(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with the lock held elsewhere: err = %v, want %v", err, context.DeadlineExceeded)
	}
	if keyExists(t, cli, m.Key()) {
		t.Errorf("queue key %s still exists after Lock gave up, want it removed", m.Key())
	}
	if got, want := holderT(t, cli, pfx), holder.Key(); got != want {
		t.Errorf("Holder = %q, want %q", got, want)
	}
	// A later Lock of the same mutex works once the lock is free.
	unlockT(t, holder)
	lockT(t, m)
	if got, want := holderT(t, cli, pfx), m.Key(); got != want {
		t.Errorf("Holder after a retry = %q, want %q", got, want)
	}
}

func TestMutexSessionExpires(t *testing.T) {
	t.Parallel()
	c, cli := newCluster(t)
	const pfx = "/expires/lock/"
	holder := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	lockT(t, holder)

	tests := []struct {
		name string
		// revokeWhileWaiting revokes the lease once the waiter is queued;
		// otherwise it is revoked before Lock is called.
		revokeWhileWaiting bool
	}{
		{"revoked while waiting", true},
		{"revoked before Lock", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession(t, c.ClientT(t), sessionTTL)
			m := lock.NewMutex(s, pfx)
			if !tt.revokeWhileWaiting {
				revoke(t, cli, s)
			}
			done := make(chan error, 1)
			go func() { done <- m.Lock(t.Context()) }()
			if tt.revokeWhileWaiting {
				waitKey(t, cli, m.Key(), true)
				revoke(t, cli, s)
			}
			if err := receive(t, done, "Lock to return"); !errors.Is(err, lock.ErrSessionExpired) {
				t.Errorf("Lock: err = %v, want %v", err, lock.ErrSessionExpired)
			}
			if keyExists(t, cli, m.Key()) {
				t.Errorf("queue key %s exists after Lock failed, want it gone", m.Key())
			}
			if got, want := holderT(t, cli, pfx), holder.Key(); got != want {
				t.Errorf("Holder = %q, want %q", got, want)
			}
		})
	}
}

// TestMutexSessionEndsWhileEnqueueing: the enqueue transaction gets no
// answer (this process is cut off from the cluster, and the request waits
// for its context). Lock must end when the session does, within one TTL,
// not when the caller's context does.
func TestMutexSessionEndsWhileEnqueueing(t *testing.T) {
	t.Parallel()
	c, cli := newCluster(t)
	started := make(chan struct{}, 1)
	cut := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/etcdserverpb.KV/Txn" {
			started <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	cfg := c.ClientConfig()
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithUnaryInterceptor(cut))
	cutCli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cutCli.Close() })
	s := newSession(t, cutCli, sessionTTL)
	m := lock.NewMutex(s, "/cut-off/lock/")

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Lock(ctx) }()
	receive(t, started, "the enqueue transaction to be sent")
	revoke(t, cli, s) // the lease ends in etcd, as it does when keep-alives cannot get through
	if err := receive(t, done, "Lock to return"); !errors.Is(err, lock.ErrSessionExpired) {
		t.Errorf("Lock: err = %v, want %v", err, lock.ErrSessionExpired)
	}
	if ctx.Err() != nil {
		t.Error("Lock returned only when the caller's context ended")
	}
}

func TestMutexFenced(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	tests := []struct {
		name string
		// setup brings m into the state under test; holder is another
		// session's mutex on the same queue.
		setup   func(t *testing.T, m, holder *lock.Mutex, s *lock.Session)
		wantErr error
	}{
		{
			name:  "holds the lock",
			setup: func(t *testing.T, m, _ *lock.Mutex, _ *lock.Session) { lockT(t, m) },
		},
		{
			name:    "never enqueued",
			setup:   func(*testing.T, *lock.Mutex, *lock.Mutex, *lock.Session) {},
			wantErr: lock.ErrNotOwner,
		},
		{
			name: "queued behind the holder",
			setup: func(t *testing.T, m, holder *lock.Mutex, _ *lock.Session) {
				lockT(t, holder)
				held, err := m.Enqueue(t.Context())
				if err != nil || held {
					t.Fatalf("Enqueue = %v, %v, want false, nil", held, err)
				}
			},
			wantErr: lock.ErrNotOwner,
		},
		{
			name: "lease revoked",
			setup: func(t *testing.T, m, _ *lock.Mutex, s *lock.Session) {
				lockT(t, m)
				revoke(t, cli, s)
			},
			wantErr: lock.ErrNotOwner,
		},
		{
			name: "unlocked",
			setup: func(t *testing.T, m, _ *lock.Mutex, _ *lock.Session) {
				lockT(t, m)
				unlockT(t, m)
			},
			wantErr: lock.ErrNotOwner,
		},
		{
			name: "lock taken over after the lease was revoked",
			setup: func(t *testing.T, m, holder *lock.Mutex, s *lock.Session) {
				lockT(t, m)
				revoke(t, cli, s)
				lockT(t, holder)
			},
			wantErr: lock.ErrNotOwner,
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pfx := fmt.Sprintf("/fenced/%d/lock/", i)
			key := fmt.Sprintf("/fenced/%d/data", i)
			s := newSession(t, cli, sessionTTL)
			m := lock.NewMutex(s, pfx)
			holder := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
			tt.setup(t, m, holder, s)

			rev, err := m.Fenced(t.Context(), clientv3.OpPut(key, "written"))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fenced: err = %v, want %v", err, tt.wantErr)
			}
			resp, gerr := cli.Get(t.Context(), key)
			if gerr != nil {
				t.Fatal(gerr)
			}
			if tt.wantErr != nil {
				if len(resp.Kvs) != 0 {
					t.Errorf("Fenced failed with %v but wrote %s = %q", err, key, resp.Kvs[0].Value)
				}
				return
			}
			if len(resp.Kvs) == 0 {
				t.Fatalf("Fenced succeeded but %s is missing", key)
			}
			if got, want := resp.Kvs[0].ModRevision, rev; got != want {
				t.Errorf("mod revision of %s = %d, want %d (the revision Fenced returned)", key, got, want)
			}
		})
	}
}

// TestMutexInterop proves that etcd's own concurrency.Mutex (which `etcdctl
// lock` uses) and Mutex share one queue: each blocks the other.
func TestMutexInterop(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const timeout = 200 * time.Millisecond

	// newEtcdMutex returns etcd's mutex on pfx and the key it queues with.
	newEtcdMutex := func(t *testing.T, pfx string) (*concurrency.Mutex, string) {
		cs, err := concurrency.NewSession(cli, concurrency.WithTTL(int(sessionTTL/time.Second)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cs.Close() })
		return concurrency.NewMutex(cs, pfx), fmt.Sprintf("%s/%x", pfx, cs.Lease())
	}

	t.Run("etcd mutex blocks Mutex", func(t *testing.T) {
		const pfx = "/interop-a/lock" // etcd adds the slash itself
		em, _ := newEtcdMutex(t, pfx)
		if err := em.Lock(t.Context()); err != nil {
			t.Fatal(err)
		}
		s := newSession(t, cli, sessionTTL)
		m := lock.NewMutex(s, pfx+"/")
		// The key etcd's mutex would use for the same lease.
		if got, want := m.Key(), fmt.Sprintf("%s/%x", pfx, s.Lease()); got != want {
			t.Errorf("Key() = %q, want %q", got, want)
		}
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		if err := m.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock while etcd's mutex holds: err = %v, want %v", err, context.DeadlineExceeded)
		}
		if got, want := holderT(t, cli, pfx+"/"), em.Key(); got != want {
			t.Errorf("Holder = %q, want etcd's mutex %q", got, want)
		}
		done := make(chan error, 1)
		go func() { done <- m.Lock(t.Context()) }()
		waitKey(t, cli, m.Key(), true)
		if err := em.Unlock(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := receive(t, done, "Lock after etcd's mutex unlocked"); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if got, want := holderT(t, cli, pfx+"/"), m.Key(); got != want {
			t.Errorf("Holder = %q, want %q", got, want)
		}
	})

	t.Run("Mutex blocks etcd mutex", func(t *testing.T) {
		const pfx = "/interop-b/lock"
		m := lock.NewMutex(newSession(t, cli, sessionTTL), pfx+"/")
		lockT(t, m)
		em, emKey := newEtcdMutex(t, pfx)
		if err := em.TryLock(t.Context()); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("etcd TryLock while Mutex holds: err = %v, want %v", err, concurrency.ErrLocked)
		}
		done := make(chan error, 1)
		go func() { done <- em.Lock(t.Context()) }()
		waitKey(t, cli, emKey, true)
		if got, want := holderT(t, cli, pfx+"/"), m.Key(); got != want {
			t.Errorf("Holder = %q, want %q", got, want)
		}
		unlockT(t, m)
		if err := receive(t, done, "etcd Lock after Mutex unlocked"); err != nil {
			t.Fatalf("etcd Lock: %v", err)
		}
		if got, want := holderT(t, cli, pfx+"/"), emKey; got != want {
			t.Errorf("Holder = %q, want etcd's mutex %q", got, want)
		}
		if err := em.Unlock(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}

// TestMutexEnqueueNoWrite shows that a session that joined the queue while
// the cluster was writable takes its turn under the NOSPACE alarm: a second
// Enqueue writes nothing, and Wait and Unlock work while etcd refuses puts.
func TestMutexEnqueueNoWrite(t *testing.T) {
	t.Parallel()
	c, cli := newCluster(t)
	const pfx = "/nospace/queue/"
	holder := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	lockT(t, holder)

	m := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	held, err := m.Enqueue(t.Context())
	if err != nil || held {
		t.Fatalf("first Enqueue = %v, %v, want false, nil", held, err)
	}
	created := createRevision(t, cli, m.Key())
	before := storeRevision(t, cli)
	held, err = m.Enqueue(t.Context())
	if err != nil || held {
		t.Fatalf("second Enqueue = %v, %v, want false, nil", held, err)
	}
	if got, want := storeRevision(t, cli), before; got != want {
		t.Errorf("store revision after a second Enqueue = %d, want %d (no write)", got, want)
	}
	if got, want := createRevision(t, cli, m.Key()), created; got != want {
		t.Errorf("create revision of %s after a second Enqueue = %d, want %d", m.Key(), got, want)
	}
	if got, want := holderT(t, cli, pfx), holder.Key(); got != want {
		t.Errorf("Holder = %q, want %q", got, want)
	}

	raiseNoSpace(t, cli, c.Members()[0].ID)
	if _, err := cli.Put(t.Context(), "/nospace/probe", "x"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put under NOSPACE: err = %v, want %v", err, rpctypes.ErrNoSpace)
	}
	// Enqueue is a transaction with a put in one branch, and etcd charges a
	// transaction for its most expensive branch: even finding its key is
	// refused under NOSPACE. Joining in advance is what makes the turn
	// possible.
	if _, err := m.Enqueue(t.Context()); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Errorf("Enqueue under NOSPACE: err = %v, want %v", err, rpctypes.ErrNoSpace)
	}

	done := make(chan error, 1)
	go func() { done <- m.Wait(t.Context()) }()
	unlockT(t, holder) // a delete: allowed under NOSPACE
	if err := receive(t, done, "Wait under NOSPACE"); err != nil {
		t.Fatalf("Wait under NOSPACE: %v", err)
	}
	if got, want := holderT(t, cli, pfx), m.Key(); got != want {
		t.Errorf("Holder after Wait = %q, want %q", got, want)
	}
	unlockT(t, m)
	if got := holderT(t, cli, pfx); got != "" {
		t.Errorf("Holder after Unlock = %q, want \"\"", got)
	}
}

func TestMutexWaitNotEnqueued(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	m := lock.NewMutex(newSession(t, cli, sessionTTL), "/wait/lock/")
	if err := m.Wait(t.Context()); err == nil {
		t.Error("Wait before Enqueue = nil, want an error")
	}
	if keyExists(t, cli, m.Key()) {
		t.Errorf("Wait before Enqueue wrote %s", m.Key())
	}
}

func TestHolder(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const pfx = "/holder/lock/"
	if got := holderT(t, cli, pfx); got != "" {
		t.Errorf("Holder of an empty queue = %q, want \"\"", got)
	}
	first := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	second := lock.NewMutex(newSession(t, cli, sessionTTL), pfx)
	if held, err := first.Enqueue(t.Context()); err != nil || !held {
		t.Fatalf("first Enqueue = %v, %v, want true, nil", held, err)
	}
	if held, err := second.Enqueue(t.Context()); err != nil || held {
		t.Fatalf("second Enqueue = %v, %v, want false, nil", held, err)
	}
	steps := []struct {
		name string
		do   func(t *testing.T)
		want string
	}{
		{"both queued", func(*testing.T) {}, first.Key()},
		{"first unlocked", func(t *testing.T) { unlockT(t, first) }, second.Key()},
		{"second unlocked", func(t *testing.T) { unlockT(t, second) }, ""},
	}
	for _, st := range steps {
		st.do(t)
		if got := holderT(t, cli, pfx); got != st.want {
			t.Errorf("%s: Holder = %q, want %q", st.name, got, st.want)
		}
	}
	// Holder reads only the queue under the prefix it is given.
	if _, err := cli.Put(t.Context(), strings.TrimSuffix(pfx, "/")+"-other/x", ""); err != nil {
		t.Fatal(err)
	}
	if got := holderT(t, cli, pfx); got != "" {
		t.Errorf("Holder with a key beside the queue = %q, want \"\"", got)
	}
}

// createRevision returns the create revision of key, which must exist.
func createRevision(t *testing.T, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		t.Fatalf("key %s missing", key)
	}
	return resp.Kvs[0].CreateRevision
}

// raiseNoSpace raises the NOSPACE alarm for member id, as etcd does itself
// when the backend reaches its quota, and disarms it at cleanup.
func raiseNoSpace(t *testing.T, cli *clientv3.Client, id uint64) {
	t.Helper()
	mc := pb.NewMaintenanceClient(cli.ActiveConnection())
	req := &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: id, Alarm: pb.AlarmType_NOSPACE}
	if _, err := mc.Alarm(t.Context(), req); err != nil {
		t.Fatalf("raise NOSPACE: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), lock.CleanupTimeout)
		defer cancel()
		_, _ = cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: id, Alarm: pb.AlarmType_NOSPACE})
	})
}

func TestMutexIsOwner(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	s := newSession(t, cli, sessionTTL)
	m := lock.NewMutex(s, "/is-owner/lock/")
	lockT(t, m)
	owner := func() bool {
		t.Helper()
		// A transaction without a linearizable op is served by whichever
		// member the client picked, from what it has applied so far: the Get
		// makes it linearizable.
		resp, err := cli.Txn(t.Context()).If(m.IsOwner()).Then(clientv3.OpGet(m.Key())).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Succeeded
	}
	if !owner() {
		t.Error("IsOwner does not hold for the holder")
	}
	revoke(t, cli, s)
	if owner() {
		t.Error("IsOwner holds after the lease was revoked")
	}
}
