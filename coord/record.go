package coord

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Record is a JSON value read from etcd with the revision it was last written
// at.
type Record[T any] struct {
	Key      string
	Value    T
	Revision int64
}

// Get reads the JSON record at key. found is false when the key does not
// exist. ctx bounds the request.
func Get[T any](ctx context.Context, cli clientv3.KV, key string) (rec Record[T], found bool, err error) {
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return rec, false, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return rec, false, nil
	}
	kv := resp.Kvs[0]
	if err := json.Unmarshal(kv.Value, &rec.Value); err != nil {
		return rec, false, fmt.Errorf("decode %s: %w", key, err)
	}
	rec.Key, rec.Revision = key, kv.ModRevision
	return rec, true, nil
}

// List reads every JSON record under prefix. Values that do not decode are
// returned with their error in bad (they are someone else's keys or a newer
// format) rather than failing the whole read. ctx bounds the request.
func List[T any](ctx context.Context, cli clientv3.KV, prefix string) (recs []Record[T], bad []error, err error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("get %s: %w", prefix, err)
	}
	for _, kv := range resp.Kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			bad = append(bad, fmt.Errorf("decode %s: %w", kv.Key, err))
			continue
		}
		recs = append(recs, Record[T]{Key: string(kv.Key), Value: v, Revision: kv.ModRevision})
	}
	return recs, bad, nil
}

// OpPutJSON is a put of v encoded as JSON, for use in a fenced transaction.
func OpPutJSON(key string, v any) (clientv3.Op, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return clientv3.Op{}, fmt.Errorf("encode %s: %w", key, err)
	}
	return clientv3.OpPut(key, string(b)), nil
}
