package agent

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRetryBusy checks which failed attempts the cluster client sends again
// (to the next member): attempts that ran out of time, however the server
// said so, and only for idempotent requests. The invoker stands in for the
// network: it fails the first attempt with the given error, then succeeds.
func TestRetryBusy(t *testing.T) {
	for _, tc := range []struct {
		name      string
		method    string
		first     error
		wantCalls int
		wantErr   bool
	}{
		{"deadline exceeded", "/etcdserverpb.KV/Range", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), 2, false},
		{"etcd 3.4 unknown deadline", "/etcdserverpb.KV/Range", status.Error(codes.Unknown, "context deadline exceeded"), 2, false},
		{"lease grant", "/etcdserverpb.Lease/LeaseGrant", status.Error(codes.DeadlineExceeded, "x"), 2, false},
		{"member list", "/etcdserverpb.Cluster/MemberList", status.Error(codes.DeadlineExceeded, "x"), 2, false},
		{"other unknown error", "/etcdserverpb.KV/Range", status.Error(codes.Unknown, "boom"), 1, true},
		{"permission denied", "/etcdserverpb.KV/Put", status.Error(codes.PermissionDenied, "etcdserver: permission denied"), 1, true},
		{"defragment is never retried", defragMethod, status.Error(codes.DeadlineExceeded, "x"), 1, true},
		{"move leader is never retried", "/etcdserverpb.Maintenance/MoveLeader", status.Error(codes.DeadlineExceeded, "x"), 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
				calls++
				if calls == 1 {
					return tc.first
				}
				return nil
			}
			err := retryBusyInterceptor(time.Second)(t.Context(), tc.method, nil, nil, nil, invoker)
			if calls != tc.wantCalls || (err != nil) != tc.wantErr {
				t.Errorf("calls = %d, err = %v; want %d calls, error %v", calls, err, tc.wantCalls, tc.wantErr)
			}
		})
	}
}

// TestRetryBusyStopsWithTheCaller: when the caller's own deadline passes,
// the interceptor returns instead of trying again.
func TestRetryBusyStopsWithTheCaller(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	calls := 0
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		calls++
		cancel()
		return status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	}
	err := retryBusyInterceptor(time.Second)(ctx, "/etcdserverpb.KV/Range", nil, nil, nil, invoker)
	if calls != 1 || err == nil {
		t.Errorf("calls = %d, err = %v; want 1 call and the error", calls, err)
	}
}
