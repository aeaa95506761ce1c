package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrSessionExpired is returned when the session's lease is gone: it expired,
// was revoked, or could not be kept alive for a whole TTL.
var ErrSessionExpired = errors.New("lock: session expired")

// CleanupTimeout bounds the work done on a fresh context after the caller's
// context ended: removing a queue key, revoking a lease.
const CleanupTimeout = 5 * time.Second

// Session is a lease kept alive in the background for as long as the agent
// runs. Keys written with it disappear when it ends, so a dead agent's queue
// entry and announcement go away on their own within one TTL.
type Session struct {
	client *clientv3.Client
	cs     *concurrency.Session
	ttl    time.Duration
	cancel context.CancelFunc
}

// NewSession grants a lease of the given TTL (whole seconds, at least one) and
// keeps it alive until Close or Abandon. ctx bounds only the grant: the session
// itself lives on after ctx ends.
func NewSession(ctx context.Context, client *clientv3.Client, ttl time.Duration) (*Session, error) {
	secs := int64(ttl / time.Second)
	if secs < 1 || ttl%time.Second != 0 {
		return nil, fmt.Errorf("lock: session TTL must be whole seconds, at least 1s, got %v", ttl)
	}
	resp, err := client.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	lifetime, cancel := context.WithCancel(context.WithoutCancel(ctx))
	cs, err := concurrency.NewSession(client,
		concurrency.WithLease(resp.ID),
		concurrency.WithTTL(int(secs)),
		concurrency.WithContext(lifetime))
	if err != nil {
		cancel()
		revokeCtx, done := context.WithTimeout(context.WithoutCancel(ctx), CleanupTimeout)
		defer done()
		_, _ = client.Revoke(revokeCtx, resp.ID)
		return nil, fmt.Errorf("keep lease %x alive: %w", int64(resp.ID), err)
	}
	// etcd may raise a short TTL to its minimum; keep what it granted.
	granted := max(time.Duration(resp.TTL)*time.Second, ttl)
	return &Session{client: client, cs: cs, ttl: granted, cancel: cancel}, nil
}

// Client is the etcd client the session was made with.
func (s *Session) Client() *clientv3.Client { return s.client }

// Lease is the lease ID that keys bound to the session carry.
func (s *Session) Lease() clientv3.LeaseID { return s.cs.Lease() }

// TTL is the lease's time to live as etcd granted it (at least the one asked
// for: etcd raises a TTL below its minimum).
func (s *Session) TTL() time.Duration { return s.ttl }

// Done returns a channel that closes when the lease is no longer kept alive:
// it expired, was revoked, keep-alives failed for a whole TTL, or the session
// was closed or abandoned.
func (s *Session) Done() <-chan struct{} { return s.cs.Done() }

// Expired reports whether Done is closed.
func (s *Session) Expired() bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// Remaining asks etcd how long the lease has left, in whole seconds (rounded
// down, so 0 when less than a second is left). It returns ErrSessionExpired
// when etcd no longer knows the lease. ctx bounds the request.
func (s *Session) Remaining(ctx context.Context) (time.Duration, error) {
	resp, err := s.client.TimeToLive(ctx, s.Lease())
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return 0, ErrSessionExpired
		}
		return 0, fmt.Errorf("lease %x time to live: %w", int64(s.Lease()), err)
	}
	// etcd answers -1 for a lease it does not know, and truncates the time
	// left to whole seconds: 0 is a live lease with less than a second left.
	if resp.TTL < 0 {
		return 0, ErrSessionExpired
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// Refresh renews the lease once, now, and returns the TTL etcd granted. It is
// used right before an action that must not outlive the lease.
//
// With etcd auth, a token is known to a member only once it has applied the
// authentication, and the client does not renew its token for this stream
// request: a member that lags a moment answers "invalid auth token". That
// is retried, a few times, until ctx ends.
func (s *Session) Refresh(ctx context.Context) (time.Duration, error) {
	for attempt := 1; ; attempt++ {
		resp, err := s.client.KeepAliveOnce(ctx, s.Lease())
		switch {
		case err == nil:
			return time.Duration(resp.TTL) * time.Second, nil
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return 0, ErrSessionExpired
		case errors.Is(err, rpctypes.ErrInvalidAuthToken) && attempt < refreshAttempts:
			select {
			case <-time.After(refreshRetryInterval):
				continue
			case <-ctx.Done():
			}
		}
		return 0, fmt.Errorf("renew lease %x: %w", int64(s.Lease()), err)
	}
}

// Retries of Refresh on an auth token a member does not know yet.
const (
	refreshAttempts      = 5
	refreshRetryInterval = 100 * time.Millisecond
)

// Close stops the keep-alives and revokes the lease, which deletes every key
// bound to it. ctx bounds the revoke; if it fails the lease expires on its own
// within one TTL.
func (s *Session) Close(ctx context.Context) error {
	s.cs.Orphan()
	defer s.cancel()
	if _, err := s.client.Revoke(ctx, s.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke lease %x: %w", int64(s.Lease()), err)
	}
	return nil
}

// Abandon stops the keep-alives without revoking: the keys bound to the lease
// stay for up to one TTL. An agent run with --once uses it so that a leader's
// agent started at the same moment still sees what it decided.
func (s *Session) Abandon() {
	s.cs.Orphan()
	s.cancel()
}
