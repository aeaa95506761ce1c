package lock

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeleteIfUnchanged deletes key only if it was last written at revision rev,
// so a record someone rewrote in between is left alone. It reports whether it
// deleted. rev must be the revision the key was read at (> 0). Deleting is
// allowed under the NOSPACE alarm. ctx bounds the request.
func DeleteIfUnchanged(ctx context.Context, cli clientv3.KV, key string, rev int64) (bool, error) {
	if rev <= 0 {
		return false, fmt.Errorf("delete %s: revision %d is not a write's", key, rev)
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("delete %s: %w", key, err)
	}
	return resp.Succeeded, nil
}

// PutIfUnchanged commits ops only if key was last written at revision rev
// (0: key absent). It is the fence for an agent that lost its lock while its
// own in-flight record still stands. ctx bounds the request.
func PutIfUnchanged(ctx context.Context, cli clientv3.KV, key string, rev int64, ops ...clientv3.Op) (bool, error) {
	if len(ops) == 0 {
		return false, fmt.Errorf("write fenced by %s: no ops", key)
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(ops...).
		Commit()
	if err != nil {
		return false, fmt.Errorf("write fenced by %s: %w", key, err)
	}
	return resp.Succeeded, nil
}
