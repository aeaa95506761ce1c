package lock

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Client is what the package needs of etcd: key-value requests, the lease
// requests of a session, and watches. *clientv3.Client implements it, and so
// does a client that sends each request to a member that answers (the
// agent's). Every request the package sends through a Client is safe to send
// twice, so a client may repeat one whose attempt timed out on another
// member.
type Client interface {
	clientv3.KV
	Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error)
	Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error)
	TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error)
	KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error)
	Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan
}

// Interface checks.
var _ Client = (*clientv3.Client)(nil)
