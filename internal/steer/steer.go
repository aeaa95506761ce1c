// Package steer is an etcd client over the members of one cluster that sends
// each request to a member that answers, and steers around one that does
// not: a member that defragments (it answers no read, write or lease grant
// until it is done, which may take minutes), one that is stopped, cut off,
// or down.
//
// It keeps one etcd client per member. Each attempt of a request is bounded
// by a short deadline; when it runs out, or the member cannot be reached,
// the request goes to the next member, and the one that failed is tried
// again only after every other member has failed too, until it answers
// once more. It needs no knowledge of who defragments — no record, no
// announcement, no gRPC health service — so it also steers around a defrag
// that nobody announced (etcdctl by hand, a defrag left by an agent that
// died) and a member stalled for any other reason.
//
// A request whose attempt timed out may still be applied by etcd: the member
// that stalls proposes it and applies it later. So every request sent
// through a Client must be safe to send twice: reads, puts of a value, deletes,
// lease renewals, and transactions guarded by comparisons that make a second
// commit a no-op or an equivalent write. A lease grant sent twice leaves an
// unused lease that expires on its own.
package steer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MinAttempt is the least time one attempt gets: a healthy member on a
// busy machine answers a write well within it.
const MinAttempt = 500 * time.Millisecond

// retryPause spaces the rounds of attempts once every member failed.
const retryPause = 100 * time.Millisecond

// Dialer makes an etcd client that reaches only the member behind urls.
type Dialer func(urls []string) (*clientv3.Client, error)

// Client sends requests to the members of one cluster, each to a member that
// answers. Its methods are safe for concurrent use.
type Client struct {
	dial    Dialer
	attempt time.Duration

	mu      sync.Mutex
	members []*member // in the order they were added
	self    uint64    // left out of the routing unless it is the only member
	closed  bool
}

type member struct {
	id     uint64
	urls   []string
	cli    *clientv3.Client
	failed time.Time // when an attempt last failed; zero once it answered again
}

// New returns a client with no members; SetMembers adds them. Each attempt
// of a request gets attempt (at least MinAttempt) or what is left of the
// request's context, whichever is shorter.
func New(dial Dialer, attempt time.Duration) *Client {
	return &Client{dial: dial, attempt: max(attempt, MinAttempt)}
}

// SetMembers makes the client's members exactly those given, by member ID
// and client URLs: it dials the new ones, and closes the clients of members
// that left or whose URLs changed. Requests go to every member but self,
// which is used only when it is the only one: an agent's own member is the
// one that defragments during its turn, and its other requests must not
// wait for it.
func (c *Client) SetMembers(members map[uint64][]string, self uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("steer: client closed")
	}
	c.self = self
	var errs []error
	keep := c.members[:0]
	for _, m := range c.members {
		urls, ok := members[m.id]
		if ok && slices.Equal(sorted(urls), m.urls) {
			keep = append(keep, m)
			continue
		}
		errs = append(errs, m.cli.Close())
	}
	c.members = keep
	ids := make([]uint64, 0, len(members))
	for id := range members {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if slices.ContainsFunc(c.members, func(m *member) bool { return m.id == id }) {
			continue
		}
		urls := sorted(members[id])
		cli, err := c.dial(urls)
		if err != nil {
			errs = append(errs, fmt.Errorf("dial member %x at %v: %w", id, urls, err))
			continue
		}
		c.members = append(c.members, &member{id: id, urls: urls, cli: cli})
	}
	return errors.Join(errs...)
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// Member returns the client that reaches member id only, for requests that
// are about that member (is it healthy, does it answer again), and whether
// the client has that member.
func (c *Client) Member(id uint64) (*clientv3.Client, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.id == id {
			return m.cli, true
		}
	}
	return nil, false
}

// Close closes every member's client.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for _, m := range c.members {
		errs = append(errs, m.cli.Close())
	}
	c.members = nil
	return errors.Join(errs...)
}

// candidates returns the members a request may go to, the best first:
// those that answered last time before those that failed, and among those
// that failed the one that failed longest ago.
func (c *Client) candidates() []*member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*member
	for _, m := range c.members {
		if m.id != c.self {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		out = slices.Clone(c.members)
	}
	slices.SortStableFunc(out, func(a, b *member) int { return a.failed.Compare(b.failed) })
	return out
}

func (c *Client) mark(m *member, failed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if failed {
		m.failed = time.Now()
	} else {
		m.failed = time.Time{}
	}
}

// call runs fn against one member after the other until one answers, an
// answer is final, or ctx ends. Each attempt is bounded by the client's
// attempt time.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context, cli *clientv3.Client) error) error {
	var last error
	for {
		ms := c.candidates()
		if len(ms) == 0 {
			return errors.New("steer: no member to send the request to")
		}
		for _, m := range ms {
			actx, cancel := context.WithTimeout(ctx, c.attempt)
			err := fn(actx, m.cli)
			attemptEnded := actx.Err() != nil
			cancel()
			if err == nil {
				c.mark(m, false)
				return nil
			}
			if ctx.Err() != nil {
				return errors.Join(ctx.Err(), err)
			}
			if !attemptEnded && !Retryable(err) {
				c.mark(m, false) // it answered, with a final error
				return err
			}
			c.mark(m, true)
			last = fmt.Errorf("member %x: %w", m.id, err)
		}
		t := time.NewTimer(retryPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), last)
		case <-t.C:
		}
	}
}

// Retryable tells an error after which the same request may go to another
// member: the attempt ran out of time, the member could not be reached or
// has no leader, or it does not know the auth token yet (it has not applied
// the authentication).
func Retryable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, rpctypes.ErrInvalidAuthToken) || errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded
	}
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	case codes.Unknown:
		// etcd 3.4 answers a request whose deadline passed with code
		// Unknown, "context deadline exceeded".
		return s.Message() == context.DeadlineExceeded.Error()
	}
	return false
}

// Do sends op to a member that answers.
func (c *Client) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	var resp clientv3.OpResponse
	err := c.call(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.Do(ctx, op)
		return err
	})
	return resp, err
}

// Get is clientv3.KV's Get, sent to a member that answers.
func (c *Client) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := c.Do(ctx, clientv3.OpGet(key, opts...))
	return resp.Get(), err
}

// Put is clientv3.KV's Put, sent to a member that answers.
func (c *Client) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	resp, err := c.Do(ctx, clientv3.OpPut(key, val, opts...))
	return resp.Put(), err
}

// Delete is clientv3.KV's Delete, sent to a member that answers.
func (c *Client) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	resp, err := c.Do(ctx, clientv3.OpDelete(key, opts...))
	return resp.Del(), err
}

// Compact is clientv3.KV's Compact, sent to a member that answers.
func (c *Client) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	var resp *clientv3.CompactResponse
	err := c.call(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.Compact(ctx, rev, opts...)
		return err
	})
	return resp, err
}

// Txn starts a transaction that Commit sends to a member that answers. It
// must be safe to commit twice (see the package documentation).
func (c *Client) Txn(ctx context.Context) clientv3.Txn {
	return &txn{c: c, ctx: ctx}
}

type txn struct {
	c          *Client
	ctx        context.Context
	cmps       []clientv3.Cmp
	thenOps    []clientv3.Op
	elseOps    []clientv3.Op
	hasIf      bool
	hasThen    bool
	hasElse    bool
	misordered bool
}

func (t *txn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.misordered = t.misordered || t.hasIf || t.hasThen || t.hasElse
	t.hasIf = true
	t.cmps = cs
	return t
}

func (t *txn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.misordered = t.misordered || t.hasThen || t.hasElse
	t.hasThen = true
	t.thenOps = ops
	return t
}

func (t *txn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.misordered = t.misordered || t.hasElse
	t.hasElse = true
	t.elseOps = ops
	return t
}

func (t *txn) Commit() (*clientv3.TxnResponse, error) {
	if t.misordered {
		return nil, errors.New("steer: transaction built out of order (want If, Then, Else, each once)")
	}
	resp, err := t.c.Do(t.ctx, clientv3.OpTxn(t.cmps, t.thenOps, t.elseOps))
	return resp.Txn(), err
}

// Grant grants a lease through a member that answers. A grant whose attempt
// timed out may leave an unused lease behind; it expires after ttl.
func (c *Client) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	var resp *clientv3.LeaseGrantResponse
	err := c.call(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.Grant(ctx, ttl)
		return err
	})
	return resp, err
}

// Revoke revokes a lease through a member that answers.
func (c *Client) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	var resp *clientv3.LeaseRevokeResponse
	err := c.call(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.Revoke(ctx, id)
		return err
	})
	return resp, err
}

// TimeToLive asks a member that answers how long a lease has left.
func (c *Client) TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	var resp *clientv3.LeaseTimeToLiveResponse
	err := c.call(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.TimeToLive(ctx, id, opts...)
		return err
	})
	return resp, err
}

// KeepAliveOnce renews a lease once through a member that answers.
func (c *Client) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	var resp *clientv3.LeaseKeepAliveResponse
	err := c.call(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var err error
		resp, err = cli.KeepAliveOnce(ctx, id)
		return err
	})
	return resp, err
}

// Watch watches through the member that answered most recently. A watch
// cannot move to another member by itself: one through a member that then
// stalls delivers nothing until that member answers again. So a caller
// bounds every wait on a watch and reads again (through Get, which steers)
// when the wait runs out.
func (c *Client) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	ms := c.candidates()
	if len(ms) == 0 {
		ch := make(chan clientv3.WatchResponse)
		close(ch)
		return ch
	}
	return ms[0].cli.Watch(ctx, key, opts...)
}
