package lock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotOwner is returned by a fenced write when the mutex is no longer held.
var ErrNotOwner = errors.New("lock: not the lock owner")

// Mutex is a fair, lease-bound mutual exclusion in etcd. Its queue has the
// layout of etcd's concurrency.Mutex — one key per waiter, prefix + lease ID in
// hexadecimal, the oldest create revision holds the lock — so the two
// interoperate: `etcdctl lock <prefix without slash>` waits in, and blocks, the
// same queue.
//
// Unlike concurrency.Mutex, every wait and every cleanup is bounded by a
// context, and a waiter gives up as soon as its session ends.
//
// A Mutex is not safe for concurrent use.
type Mutex struct {
	s   *Session
	pfx string
	key string
	rev int64 // create revision of key; 0 while not queued
}

// NewMutex returns the mutex whose queue lives under pfx, for the given
// session. pfx gets a trailing "/" if it has none, as etcd's
// concurrency.NewMutex adds one, so "lock" never matches "locks/...".
func NewMutex(s *Session, pfx string) *Mutex {
	if !strings.HasSuffix(pfx, "/") {
		pfx += "/"
	}
	return &Mutex{s: s, pfx: pfx, key: fmt.Sprintf("%s%x", pfx, int64(s.Lease()))}
}

// Key is this session's key in the queue.
func (m *Mutex) Key() string { return m.key }

// Enqueue puts this session's key in the queue, or finds it already there, and
// reports whether it is at the head. It does not wait. ctx bounds the request.
//
// Enqueue is a transaction with a put in one branch, and under the NOSPACE
// alarm etcd refuses it even when the key is already there (it charges a
// transaction for its costliest branch). Wait and Unlock write nothing, so a
// session that enqueued while the cluster was writable can still take its
// turn under NOSPACE.
func (m *Mutex) Enqueue(ctx context.Context) (held bool, err error) {
	cli := m.s.Client()
	cmp := clientv3.Compare(clientv3.CreateRevision(m.key), "=", 0)
	put := clientv3.OpPut(m.key, "", clientv3.WithLease(m.s.Lease()))
	get := clientv3.OpGet(m.key)
	owner := clientv3.OpGet(m.pfx, clientv3.WithFirstCreate()...)
	resp, err := cli.Txn(ctx).If(cmp).Then(put, owner).Else(get, owner).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// The lease ended before the session noticed (Done closes at the
		// next keep-alive).
		return false, fmt.Errorf("enqueue %s: %w", m.key, ErrSessionExpired)
	}
	if err != nil {
		return false, fmt.Errorf("enqueue %s: %w", m.key, err)
	}
	m.rev = resp.Header.Revision
	if !resp.Succeeded {
		m.rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	kvs := resp.Responses[1].GetResponseRange().Kvs
	return len(kvs) == 0 || kvs[0].CreateRevision == m.rev, nil
}

// Enqueued reports whether the key is in etcd now. ctx bounds the request.
func (m *Mutex) Enqueued(ctx context.Context) (bool, error) {
	resp, err := m.s.Client().Get(ctx, m.key, clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("get %s: %w", m.key, err)
	}
	if resp.Count == 0 {
		return false, nil
	}
	return true, nil
}

// Lock enqueues and waits until this session holds the lock. ctx bounds the
// whole wait. If ctx ends, the session ends or etcd fails first, the key is
// taken out of the queue again (on a fresh context bounded by CleanupTimeout)
// and the cause is returned: ctx's error, ErrSessionExpired, or the etcd error.
func (m *Mutex) Lock(ctx context.Context) error {
	// A request to members this process cannot reach (a partition) waits
	// for its context; the session ends within one TTL then, and so does
	// the Lock.
	sctx, cancel := m.whileSession(ctx)
	defer cancel(nil)
	held, err := m.Enqueue(sctx)
	if err != nil {
		err = waitErr(sctx, err)
	} else if !held {
		err = m.Wait(sctx)
	}
	if err != nil {
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), CleanupTimeout)
		defer cancel()
		if uerr := m.Unlock(cleanup); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return err
	}
	return nil
}

// Wait waits until the already-enqueued key is at the head of the queue. It
// writes nothing and leaves the key in place when it fails. ctx bounds the
// wait; it returns ErrSessionExpired when the session ends or the key vanished.
func (m *Mutex) Wait(ctx context.Context) error {
	if m.rev == 0 {
		return fmt.Errorf("wait %s: not enqueued", m.key)
	}
	ctx, cancel := m.whileSession(ctx)
	defer cancel(nil)
	cli := m.s.Client()
	for {
		// The newest key older than ours; once no such key is left, we hold it.
		opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(m.rev-1))
		resp, err := cli.Get(ctx, m.pfx, opts...)
		if err != nil {
			return waitErr(ctx, fmt.Errorf("wait %s: %w", m.key, err))
		}
		if len(resp.Kvs) == 0 {
			break
		}
		// A watch through a member that stalls (it defragments) delivers
		// nothing until it answers again: wait at most Poll, then read again.
		wctx, cancel := context.WithTimeout(ctx, Poll)
		err = waitDelete(wctx, cli, string(resp.Kvs[0].Key), resp.Header.Revision)
		cancel()
		if err != nil && ctx.Err() == nil && wctx.Err() == nil {
			return waitErr(ctx, fmt.Errorf("wait %s: %w", m.key, err))
		}
		if ctx.Err() != nil {
			return waitErr(ctx, fmt.Errorf("wait %s: %w", m.key, ctx.Err()))
		}
	}
	ok, err := m.Enqueued(ctx)
	if err != nil {
		return waitErr(ctx, err)
	}
	if !ok {
		return ErrSessionExpired
	}
	return nil
}

// whileSession returns a context that also ends, with the cause
// ErrSessionExpired, when the session ends.
func (m *Mutex) whileSession(ctx context.Context) (context.Context, context.CancelCauseFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-m.s.Done():
			cancel(ErrSessionExpired)
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// waitErr prefers the reason the context was cancelled (session expiry) over
// the error the cancellation caused.
func waitErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// waitDelete waits for key to be deleted after revision rev.
func waitDelete(ctx context.Context, cli Client, key string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch ended before the key was deleted")
}

// Unlock takes this session's key out of the queue, releasing the lock if it
// was held. Deleting is allowed under the NOSPACE alarm. ctx bounds the request.
func (m *Mutex) Unlock(ctx context.Context) error {
	if _, err := m.s.Client().Delete(ctx, m.key); err != nil {
		return fmt.Errorf("unlock %s: %w", m.key, err)
	}
	m.rev = 0
	return nil
}

// IsOwner is the comparison that holds in a transaction while this session's
// key is in the queue as it was enqueued. Like concurrency.Mutex.IsOwner, it
// means "holds the lock" only once Lock or Wait has returned nil (or Enqueue
// reported held): a waiting key passes it too. Fenced also checks the head.
func (m *Mutex) IsOwner() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(m.key), "=", m.rev)
}

// Fenced commits ops only if this session still holds the lock, and returns the
// revision of the write. It returns ErrNotOwner when it does not. ctx bounds
// the request.
func (m *Mutex) Fenced(ctx context.Context, ops ...clientv3.Op) (int64, error) {
	if m.rev == 0 {
		return 0, ErrNotOwner
	}
	if len(ops) == 0 {
		// A transaction without ops may be answered by a member that lags.
		return 0, errors.New("fenced write: no ops")
	}
	// IsOwner alone also holds for a key still waiting in the queue; no key
	// older than ours means ours is at the head.
	head := clientv3.Compare(clientv3.CreateRevision(m.pfx), ">", m.rev-1).WithPrefix()
	resp, err := m.s.Client().Txn(ctx).If(m.IsOwner(), head).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("fenced write: %w", err)
	}
	if !resp.Succeeded {
		return 0, ErrNotOwner
	}
	return resp.Header.Revision, nil
}

// Release commits ops and releases the lock in one transaction, only if this
// session still holds it, and returns the revision of the write. It returns
// ErrNotOwner when the session does not hold the lock; then nothing was
// written. ctx bounds the request.
func (m *Mutex) Release(ctx context.Context, ops ...clientv3.Op) (int64, error) {
	rev, err := m.Fenced(ctx, append(slices.Clip(ops), clientv3.OpDelete(m.key))...)
	if err != nil {
		return 0, err
	}
	m.rev = 0
	return rev, nil
}

// Holder returns the key at the head of the queue, or "" when the queue is
// empty. ctx bounds the request.
func Holder(ctx context.Context, cli clientv3.KV, pfx string) (string, error) {
	resp, err := cli.Get(ctx, pfx, clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", pfx, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Key), nil
}

// Poll bounds every wait on a watch: after it, the waiter reads again
// (through its Client, which may steer the read to a member that answers).
const Poll = time.Second
