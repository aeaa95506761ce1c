package etcddata

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/steer"
)

// DefaultFillPrefix is the key prefix Fill writes under by default.
const DefaultFillPrefix = "/etcddata/fill/"

// FillOptions says what Fill writes.
type FillOptions struct {
	// Prefix of the keys; "" means DefaultFillPrefix. Keys are Prefix
	// followed by a zero-padded 9-digit index.
	Prefix string
	// Keys is the number of keys written; it must be > 0.
	Keys int
	// ValueSize is the size of every value in bytes; 0 means 1024.
	ValueSize int
	// Garbage is the fraction (0 to 1) of the keys that become garbage after
	// they are written: the first Garbage*Keys keys are deleted (or, with
	// Overwrite, written again). 0 writes no garbage: a database that is full
	// and has nothing to reclaim.
	Garbage float64
	// Overwrite makes garbage by overwriting keys instead of deleting them;
	// the number of keys stays Keys.
	Overwrite bool
	// NoCompact skips the final compaction, so the garbage stays as history
	// and dbSizeInUse does not drop.
	NoCompact bool
	// OpsPerTxn is the maximum number of Puts per Txn; 0 means 128, etcd's
	// default --max-txn-ops. Raise Options.MaxTxnOps to go higher.
	OpsPerTxn int
	// MaxTxnBytes bounds the value bytes in one Txn; 0 means 1 MiB, below
	// etcd's default --max-request-bytes (1.5 MiB). A value larger than this
	// is sent alone (and needs Options.MaxRequestBytes above it).
	MaxTxnBytes int
	// Concurrency is the number of Txns in flight; 0 means 4.
	Concurrency int
}

// FillResult says what Fill did.
type FillResult struct {
	Keys         int   // keys under the prefix at the end
	Garbage      int   // keys deleted or overwritten
	BytesWritten int64 // value bytes written, overwrites included
	// Revision is the store revision after the last write; the compaction
	// (unless NoCompact) is at this revision.
	Revision int64
	// Sizes is the Status of every endpoint of the client right after the
	// compaction. The member that served the compaction has applied it
	// physically; others may still be compacting (see Cluster.WaitCompacted).
	Sizes []EndpointSize
	// Took is the duration of the whole Fill, CompactTook of its compaction.
	Took, CompactTook time.Duration
}

// EndpointSize is the database size of one member, from Status.
type EndpointSize struct {
	Endpoint    string
	MemberID    uint64
	DBSize      int64 // dbSize: the physical size of the bbolt file
	DBSizeInUse int64 // dbSizeInUse: the part of it that holds data
}

// Free returns DBSize-DBSizeInUse: what a defrag could give back.
func (s EndpointSize) Free() int64 { return s.DBSize - s.DBSizeInUse }

// Fill creates real fragmentation through cli: it writes opts.Keys keys of
// opts.ValueSize bytes in Txn batches, makes the first Garbage*Keys keys
// garbage (range deletes, or overwrites), and compacts to the newest
// revision (physically, on the member that serves the request), so that
// dbSize-dbSizeInUse becomes large. ctx bounds everything. On error, the
// result describes what was done so far (for example when the quota is hit:
// "etcdserver: mvcc: database space exceeded").
func Fill(ctx context.Context, cli *clientv3.Client, opts FillOptions) (FillResult, error) {
	start := time.Now()
	var res FillResult
	if opts.Keys <= 0 {
		return res, fmt.Errorf("fill: keys = %d, want > 0", opts.Keys)
	}
	if opts.Garbage < 0 || opts.Garbage > 1 || math.IsNaN(opts.Garbage) {
		return res, fmt.Errorf("fill: garbage = %v, want 0..1", opts.Garbage)
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultFillPrefix
	}
	if opts.ValueSize <= 0 {
		opts.ValueSize = 1024
	}
	if opts.OpsPerTxn <= 0 {
		opts.OpsPerTxn = 128
	}
	if opts.MaxTxnBytes <= 0 {
		opts.MaxTxnBytes = 1 << 20
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	key := func(i int) string { return fmt.Sprintf("%s%09d", opts.Prefix, i) }
	value := strings.Repeat("x", opts.ValueSize)
	perTxn := max(1, min(opts.OpsPerTxn, opts.MaxTxnBytes/(opts.ValueSize+len(opts.Prefix)+9)))
	garbage := int(math.Round(opts.Garbage * float64(opts.Keys)))

	var mu sync.Mutex // guards res.BytesWritten
	put := func(ctx context.Context, lo, hi int) error {
		ops := make([]clientv3.Op, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ops = append(ops, clientv3.OpPut(key(i), value))
		}
		if err := retryTransient(ctx, func() error {
			_, err := cli.Txn(ctx).Then(ops...).Commit()
			return err
		}); err != nil {
			return fmt.Errorf("put keys %d..%d: %w", lo, hi-1, err)
		}
		mu.Lock()
		res.BytesWritten += int64((hi - lo) * opts.ValueSize)
		mu.Unlock()
		return nil
	}
	del := func(ctx context.Context, lo, hi int) error {
		if err := retryTransient(ctx, func() error {
			_, err := cli.Delete(ctx, key(lo), clientv3.WithRange(key(hi)))
			return err
		}); err != nil {
			return fmt.Errorf("delete keys %d..%d: %w", lo, hi-1, err)
		}
		return nil
	}

	if err := inBatches(ctx, opts.Concurrency, opts.Keys, perTxn, put); err != nil {
		return res, fmt.Errorf("fill: %w", err)
	}
	res.Keys = opts.Keys
	if garbage > 0 {
		var err error
		if opts.Overwrite {
			err = inBatches(ctx, opts.Concurrency, garbage, perTxn, put)
		} else {
			// A range delete of 10000 keys is one small raft entry.
			err = inBatches(ctx, opts.Concurrency, garbage, 10000, del)
			if err == nil {
				res.Keys = opts.Keys - garbage
			}
		}
		if err != nil {
			return res, fmt.Errorf("fill: %w", err)
		}
		res.Garbage = garbage
	}

	// The revision after every write: a linearizable read's header.
	var get *clientv3.GetResponse
	err := retryTransient(ctx, func() (err error) {
		get, err = cli.Get(ctx, opts.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err
	})
	if err != nil {
		return res, fmt.Errorf("fill: read revision: %w", err)
	}
	res.Revision = get.Header.Revision
	if !opts.NoCompact {
		t := time.Now()
		if err := retryTransient(ctx, func() error {
			_, err := cli.Compact(ctx, res.Revision, clientv3.WithCompactPhysical())
			if errors.Is(err, rpctypes.ErrCompacted) {
				return nil
			}
			return err
		}); err != nil {
			return res, fmt.Errorf("fill: compact at %d: %w", res.Revision, err)
		}
		res.CompactTook = time.Since(t)
	}
	for _, ep := range cli.Endpoints() {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			return res, fmt.Errorf("fill: status of %s: %w", ep, err)
		}
		res.Sizes = append(res.Sizes, EndpointSize{
			Endpoint:    ep,
			MemberID:    st.Header.MemberId,
			DBSize:      st.DbSize,
			DBSizeInUse: st.DbSizeInUse,
		})
	}
	res.Took = time.Since(start)
	return res, nil
}

// retryTransient calls do until it succeeds, fails with an error that is not
// a transient one of etcd's (a request timed out on a busy machine, a leader
// election), or ctx ends. Everything Fill sends is safe to send again: the
// same puts, the same range deletes.
func retryTransient(ctx context.Context, do func() error) error {
	for {
		err := do()
		if err == nil || ctx.Err() != nil || !steer.Retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(transientPause):
		}
	}
}

// transientPause spaces the retries of a request that failed transiently.
const transientPause = 100 * time.Millisecond

// inBatches calls do for [0,n) cut into batches of size, with up to
// workers calls at a time. The first error cancels the rest and is
// returned.
func inBatches(ctx context.Context, workers, n, size int, do func(ctx context.Context, lo, hi int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	batches := make(chan [2]int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for b := range batches {
				if err := do(ctx, b[0], b[1]); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for lo := 0; lo < n; lo += size {
		select {
		case batches <- [2]int{lo, min(lo+size, n)}:
		case <-ctx.Done():
			break feed
		}
	}
	close(batches)
	wg.Wait()
	// nil if every batch succeeded; else the first error, or the parent's
	// cause.
	return context.Cause(ctx)
}
