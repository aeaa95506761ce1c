package agent

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A member that defragments answers no range, put or transaction until it is
// done, and the cluster client's balancer may send a request there. So the
// cluster client gives each attempt of an idempotent KV, lease or cluster
// request a share of its deadline, and when an attempt times out it tries
// again: the balancer picks the next member. Defragment, MoveLeader and the
// other maintenance requests are never retried.

// minAttempt is the least time one attempt gets.
const minAttempt = 500 * time.Millisecond

// retryBusyInterceptor retries idempotent requests whose attempt timed out
// while the caller's context is still alive.
func retryBusyInterceptor(attempt time.Duration) grpc.UnaryClientInterceptor {
	attempt = max(attempt, minAttempt)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !retriable(method) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		for {
			actx, cancel := context.WithTimeout(ctx, attempt)
			err := invoker(actx, method, req, reply, cc, opts...)
			timedOut := actx.Err() != nil || attemptTimedOut(err)
			cancel()
			if err == nil || ctx.Err() != nil || !timedOut {
				return err
			}
		}
	}
}

// attemptTimedOut tells an attempt that ran out of time. etcd 3.4 answers
// a request whose deadline passed with code Unknown, "context deadline
// exceeded", a moment before the client's own deadline fires.
func attemptTimedOut(err error) bool {
	if err == nil {
		return false
	}
	s := status.Convert(err)
	return s.Code() == codes.DeadlineExceeded ||
		s.Code() == codes.Unknown && strings.Contains(s.Message(), context.DeadlineExceeded.Error())
}

// retriable tells the requests that are safe to send again: reads, and the
// agent's writes, which are idempotent in effect (announcements, fenced or
// compare-guarded transactions, lease grants whose orphans expire).
func retriable(method string) bool {
	for _, p := range []string{"/etcdserverpb.KV/", "/etcdserverpb.Lease/", "/etcdserverpb.Cluster/MemberList"} {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}
