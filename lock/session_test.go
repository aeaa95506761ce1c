package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

func TestNewSessionTTL(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	tests := []struct {
		name    string
		ttl     time.Duration
		wantErr bool
	}{
		{"zero", 0, true},
		{"negative", -time.Second, true},
		{"below one second", 500 * time.Millisecond, true},
		{"fractional", 1500 * time.Millisecond, true},
		{"one second", time.Second, false},
		{"whole seconds", 3 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := cli.Leases(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			s, err := lock.NewSession(t.Context(), cli, tt.ttl)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewSession(%v) = nil error, want an error", tt.ttl)
				}
				after, err := cli.Leases(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				if got, want := len(after.Leases), len(before.Leases); got != want {
					t.Errorf("leases after a refused NewSession(%v) = %d, want %d", tt.ttl, got, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSession(%v): %v", tt.ttl, err)
			}
			t.Cleanup(func() { _ = s.Close(context.Background()) })
			if got, want := s.TTL(), tt.ttl; got != want {
				t.Errorf("TTL() = %v, want %v", got, want)
			}
			if got, want := s.Client(), cli; got != want {
				t.Errorf("Client() = %p, want %p", got, want)
			}
			ttl, err := cli.TimeToLive(t.Context(), s.Lease())
			if err != nil {
				t.Fatal(err)
			}
			if got, want := time.Duration(ttl.GrantedTTL)*time.Second, tt.ttl; got != want {
				t.Errorf("granted TTL of lease %x = %v, want %v", int64(s.Lease()), got, want)
			}
		})
	}
}

func TestSessionClose(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	s := newSession(t, cli, 5*time.Second)
	const key = "/session-close/k"
	if _, err := cli.Put(t.Context(), key, "v", clientv3.WithLease(s.Lease())); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The revoke went through raft before Close returned: the key is gone now,
	// not within a TTL.
	if keyExists(t, cli, key) {
		t.Errorf("key %s exists after Close, want it deleted with the lease", key)
	}
	if !s.Expired() {
		t.Error("Expired() = false after Close, want true")
	}
	if _, err := s.Remaining(t.Context()); !errors.Is(err, lock.ErrSessionExpired) {
		t.Errorf("Remaining after Close: err = %v, want %v", err, lock.ErrSessionExpired)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestSessionAbandon(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const ttl = 3 * time.Second
	s := newSession(t, cli, ttl)
	const key = "/session-abandon/k"
	if _, err := cli.Put(t.Context(), key, "v", clientv3.WithLease(s.Lease())); err != nil {
		t.Fatal(err)
	}
	s.Abandon()
	if !s.Expired() {
		t.Error("Expired() = false after Abandon, want true: nothing keeps the lease alive")
	}
	// Not revoked: the lease and its key are still there.
	resp, err := cli.TimeToLive(t.Context(), s.Lease())
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL < 0 {
		t.Fatalf("lease %x is gone right after Abandon, want it to live on for up to %v", int64(s.Lease()), ttl)
	}
	if !keyExists(t, cli, key) {
		t.Errorf("key %s is gone right after Abandon, want it kept until the lease expires", key)
	}
	// Once the TTL has passed without keep-alives, etcd expires the lease.
	waitKey(t, cli, key, false)
	if _, err := s.Remaining(t.Context()); !errors.Is(err, lock.ErrSessionExpired) {
		t.Errorf("Remaining after expiry: err = %v, want %v", err, lock.ErrSessionExpired)
	}
}

func TestSessionRevokedElsewhere(t *testing.T) {
	t.Parallel()
	c, _ := newCluster(t)
	// The session's client talks to one member, the revoke goes through another.
	ms := c.Members()
	s := newSession(t, c.ClientT(t, ms[0].ClientURL), 2*time.Second)
	if s.Expired() {
		t.Fatal("Expired() = true for a new session")
	}
	revoke(t, c.ClientT(t, ms[1].ClientURL), s)
	closed(t, s.Done(), "Done after the lease was revoked")
	if !s.Expired() {
		t.Error("Expired() = false after Done closed")
	}
	if _, err := s.Remaining(t.Context()); !errors.Is(err, lock.ErrSessionExpired) {
		t.Errorf("Remaining: err = %v, want %v", err, lock.ErrSessionExpired)
	}
	if _, err := s.Refresh(t.Context()); !errors.Is(err, lock.ErrSessionExpired) {
		t.Errorf("Refresh: err = %v, want %v", err, lock.ErrSessionExpired)
	}
	// Closing a session whose lease is already gone is not an error.
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close = %v, want nil", err)
	}
}

func TestSessionRemaining(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	for _, ttl := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second} {
		t.Run(ttl.String(), func(t *testing.T) {
			s := newSession(t, cli, ttl)
			got, err := s.Remaining(t.Context())
			if err != nil {
				t.Fatalf("Remaining() of a live session: %v", err)
			}
			if got < 0 || got > ttl {
				t.Errorf("Remaining() = %v, want within [0, %v]", got, ttl)
			}
		})
	}
}

func TestSessionRefresh(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const ttl = 3 * time.Second
	s := newSession(t, cli, ttl)
	// Without keep-alives the lease runs down; wait until etcd reports at
	// least a second gone.
	s.Abandon()
	var before int64
	eventually(t, waitTimeout, "the lease runs down", func(ctx context.Context) (bool, error) {
		resp, err := cli.TimeToLive(ctx, s.Lease())
		if err != nil {
			return false, err
		}
		before = resp.TTL
		return resp.TTL >= 0 && resp.TTL < int64(ttl/time.Second)-1, nil
	})
	got, err := s.Refresh(t.Context())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if got != ttl {
		t.Errorf("Refresh() = %v, want %v", got, ttl)
	}
	resp, err := cli.TimeToLive(t.Context(), s.Lease())
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL <= before {
		t.Errorf("lease TTL after Refresh = %ds, want more than the %ds before it", resp.TTL, before)
	}
}
