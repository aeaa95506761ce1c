package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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
//
// The session renews its lease itself, one request at a time (a third of the
// TTL after the last renewal, as etcd's client does), rather than through
// one long keep-alive stream: each renewal is a request of its own, so a
// Client that steers around a member that stalls renews through another
// member, where a stream would stay with the stalled one until it answers.
type Session struct {
	client Client
	lease  clientv3.LeaseID
	ttl    time.Duration

	stop     context.CancelFunc // ends the keep-alive loop
	done     chan struct{}      // closed when the lease is no longer kept alive
	stopped  chan struct{}      // closed when the loop returned
	mu       sync.Mutex
	deadline time.Time // when the lease expires at the latest, by the last renewal
}

// NewSession grants a lease of the given TTL (whole seconds, at least one) and
// keeps it alive until Close or Abandon. ctx bounds only the grant: the session
// itself lives on after ctx ends.
func NewSession(ctx context.Context, client Client, ttl time.Duration) (*Session, error) {
	secs := int64(ttl / time.Second)
	if secs < 1 || ttl%time.Second != 0 {
		return nil, fmt.Errorf("lock: session TTL must be whole seconds, at least 1s, got %v", ttl)
	}
	sent := time.Now()
	resp, err := client.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	// etcd may raise a short TTL to its minimum; keep what it granted.
	granted := max(time.Duration(resp.TTL)*time.Second, ttl)
	lifetime, stop := context.WithCancel(context.WithoutCancel(ctx))
	s := &Session{
		client: client, lease: resp.ID, ttl: granted, stop: stop,
		done: make(chan struct{}), stopped: make(chan struct{}),
		deadline: sent.Add(granted),
	}
	go s.keepAlive(lifetime)
	return s, nil
}

// keepAlive renews the lease a third of its TTL after each renewal, until
// ctx ends (Close, Abandon), etcd no longer knows the lease, or no renewal
// succeeded before the lease's deadline.
func (s *Session) keepAlive(ctx context.Context) {
	defer close(s.stopped)
	defer close(s.done)
	for {
		s.mu.Lock()
		deadline := s.deadline
		s.mu.Unlock()
		next := deadline.Add(-s.ttl * 2 / 3)
		if !sleepUntil(ctx, next) {
			return
		}
		for {
			rctx, cancel := context.WithDeadline(ctx, deadline)
			_, err := s.renew(rctx)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil || errors.Is(err, ErrSessionExpired) || !time.Now().Before(deadline) {
				return
			}
			if !sleepUntil(ctx, time.Now().Add(renewRetryPause)) {
				return
			}
		}
	}
}

// renewRetryPause spaces the attempts to renew a lease that failed.
const renewRetryPause = 100 * time.Millisecond

func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// renew renews the lease once and moves its deadline: the granted TTL from
// the moment the request was sent (etcd starts it a moment later, so the
// lease lives at least that long).
func (s *Session) renew(ctx context.Context) (time.Duration, error) {
	sent := time.Now()
	resp, err := s.client.KeepAliveOnce(ctx, s.lease)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return 0, ErrSessionExpired
	case err != nil:
		return 0, fmt.Errorf("renew lease %x: %w", int64(s.lease), err)
	case resp.TTL <= 0:
		return 0, ErrSessionExpired
	}
	ttl := time.Duration(resp.TTL) * time.Second
	s.mu.Lock()
	if d := sent.Add(ttl); d.After(s.deadline) {
		s.deadline = d
	}
	s.mu.Unlock()
	return ttl, nil
}

// Client is the etcd client the session was made with.
func (s *Session) Client() Client { return s.client }

// Lease is the lease ID that keys bound to the session carry.
func (s *Session) Lease() clientv3.LeaseID { return s.lease }

// TTL is the lease's time to live as etcd granted it (at least the one asked
// for: etcd raises a TTL below its minimum).
func (s *Session) TTL() time.Duration { return s.ttl }

// Done returns a channel that closes when the lease is no longer kept alive:
// it expired, was revoked, no renewal succeeded for a whole TTL, or the
// session was closed or abandoned.
func (s *Session) Done() <-chan struct{} { return s.done }

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
// used right before an action that must not outlive the lease: after it
// returns, the lease lives at least the returned TTL from the moment Refresh
// was called.
//
// With etcd auth, a token is known to a member only once it has applied the
// authentication, and the client does not renew its token for this stream
// request: a member that lags a moment answers "invalid auth token". That
// is retried, a few times, until ctx ends.
func (s *Session) Refresh(ctx context.Context) (time.Duration, error) {
	for attempt := 1; ; attempt++ {
		ttl, err := s.renew(ctx)
		if err == nil || !errors.Is(err, rpctypes.ErrInvalidAuthToken) || attempt >= refreshAttempts {
			return ttl, err
		}
		if !sleepUntil(ctx, time.Now().Add(refreshRetryInterval)) {
			return 0, err
		}
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
	s.Abandon()
	if _, err := s.client.Revoke(ctx, s.Lease()); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke lease %x: %w", int64(s.Lease()), err)
	}
	return nil
}

// Abandon stops the keep-alives without revoking: the keys bound to the lease
// stay for up to one TTL. An agent run with --once uses it so that a leader's
// agent started at the same moment still sees what it decided. It returns
// once the keep-alive loop has stopped.
func (s *Session) Abandon() {
	s.stop()
	<-s.stopped
}
