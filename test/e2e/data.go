//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// HarnessPrefix is where the harness itself writes (probes of
// writability); Data leaves these keys out, like the agents' keys.
const HarnessPrefix = "/e2e-harness/"

// Fill writes through the cluster's client what opts says (etcddata.Fill)
// and, unless opts.NoCompact, compacts to the newest revision on every
// member (Compact), so that every member's Status shows the free pages.
func (c *Cluster) Fill(ctx context.Context, opts etcddata.FillOptions) (etcddata.FillResult, error) {
	start := time.Now()
	compact := !opts.NoCompact
	opts.NoCompact = true
	res, err := etcddata.Fill(ctx, c.Client(), opts)
	if err != nil || !compact {
		return res, err
	}
	t := time.Now()
	if err := c.Compact(ctx, res.Revision); err != nil {
		return res, fmt.Errorf("fill: %w", err)
	}
	res.CompactTook = time.Since(t)
	res.Took = time.Since(start)
	return res, nil
}

// Compact compacts the cluster to rev and waits until every running member
// has applied it to its backend and counts the freed pages as free: it sends
// each member, through its own endpoint, Compact(rev, physical) three
// times. etcd answers each after that member's earlier compactions are done
// and commits its backend; bbolt counts pages freed by a commit as free only
// after later commits. "Required revision has been compacted" is the
// expected answer. ctx bounds the wait.
func (c *Cluster) Compact(ctx context.Context, rev int64) error {
	for _, m := range c.members {
		if !m.Running() {
			continue
		}
		cli, err := m.client()
		if err != nil {
			return err
		}
		for range 3 {
			if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("compact %s at %d: %w", m.Name, rev, err)
			}
		}
	}
	return nil
}

// WaitWritable puts a probe key every 20 ms until a put succeeds. ctx
// bounds the wait.
func WaitWritable(ctx context.Context, cli *clientv3.Client) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, putErr := cli.Put(pctx, HarnessPrefix+"probe", "ok")
		cancel()
		if putErr == nil {
			return nil
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("the cluster is not writable again: %w (last put: %w)", err, putErr)
		}
	}
}

// WaitNoSpaceQueue waits until n agents have joined the NOSPACE queue,
// which they do in advance, while the cluster is writable.
func (c *Cluster) WaitNoSpaceQueue(ctx context.Context, n int) error {
	cli := c.Client()
	return c.Observer().Wait(ctx, fmt.Sprintf("%d agents in the NOSPACE queue", n), func() bool {
		resp, err := cli.Get(ctx, c.LockPrefix+"nospace/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == int64(n)
	})
}

// FillUntilNoSpace overwrites keys Prefix0..Prefix<keys-1> with values of
// valueSize bytes, round and round with 4 writers, until etcd refuses a
// write with NOSPACE ("database space exceeded"). The history fills the
// quota: nothing is compacted. It returns the number of successful writes.
// ctx bounds it.
func (c *Cluster) FillUntilNoSpace(ctx context.Context, prefix string, keys, valueSize int) (int, error) {
	cli := c.Client()
	val := strings.Repeat("x", valueSize)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex
	next, writes := 0, 0
	var wg sync.WaitGroup
	errNoSpace := errors.New("nospace")
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				_, err := cli.Put(ctx, fmt.Sprintf("%s%d", prefix, i%keys), val)
				switch {
				case errors.Is(err, rpctypes.ErrNoSpace):
					cancel(errNoSpace)
				case err != nil:
					cancel(fmt.Errorf("put %d: %w", i, err))
				default:
					mu.Lock()
					writes++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); !errors.Is(err, errNoSpace) {
		return writes, fmt.Errorf("fill until NOSPACE: %w", err)
	}
	return writes, nil
}

// Data is a digest of the user data: every key outside the agents' lock
// prefix and HarnessPrefix, with its value, create and mod revisions, version and lease, read
// at one revision.
type Data struct {
	Revision int64
	Keys     int
	Bytes    int64 // value bytes
	Digest   string
}

// String formats d for messages.
func (d Data) String() string {
	return fmt.Sprintf("%d keys, %d value bytes, sha256 %s… at revision %d", d.Keys, d.Bytes, d.Digest[:12], d.Revision)
}

// Data reads the digest of the user data (I4) and checks that every running
// member has the same HashKV at a common revision. It fails the test on
// error or on a HashKV mismatch.
func (o *Observer) Data(t testing.TB) Data {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := o.c.CheckHashKV(ctx); err != nil {
		t.Fatalf("I4: %v", err)
	}
	d, err := o.c.ReadData(ctx)
	if err != nil {
		t.Fatalf("I4: %v", err)
	}
	return d
}

// CheckData fails the test if the user data differs from before (same keys,
// values, revisions: a defrag changes no data) or the members' HashKV differ
// at a common revision (I4).
func (o *Observer) CheckData(t testing.TB, before Data) {
	t.Helper()
	after := o.Data(t)
	if after.Digest != before.Digest || after.Keys != before.Keys || after.Bytes != before.Bytes {
		t.Errorf("I4 violated: user data changed: before %v, after %v", before, after)
	}
}

// ReadData reads the digest of the user data at the current revision,
// page by page (pages of at most about 16 MiB). ctx bounds it.
func (c *Cluster) ReadData(ctx context.Context) (Data, error) {
	cli := c.Client()
	for attempt := 0; ; attempt++ {
		d, err := c.readData(ctx, cli)
		if err == nil || !errors.Is(err, rpctypes.ErrCompacted) || attempt >= 3 {
			return d, err
		}
	}
}

func (c *Cluster) readData(ctx context.Context, cli *clientv3.Client) (Data, error) {
	first, err := cli.Get(ctx, HarnessPrefix+"revision", clientv3.WithCountOnly())
	if err != nil {
		return Data{}, fmt.Errorf("read data: %w", err)
	}
	d := Data{Revision: first.Header.Revision}
	h := sha256.New()
	num := func(v int64) { _ = binary.Write(h, binary.BigEndian, v) } // a hash never fails
	from, limit := "\x00", int64(8)
	for {
		resp, err := cli.Get(ctx, from, clientv3.WithFromKey(), clientv3.WithRev(d.Revision),
			clientv3.WithLimit(limit), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return Data{}, fmt.Errorf("read data at %d from %q: %w", d.Revision, from, err)
		}
		var page int64
		for _, kv := range resp.Kvs {
			page += int64(len(kv.Value))
			if strings.HasPrefix(string(kv.Key), c.LockPrefix) || strings.HasPrefix(string(kv.Key), HarnessPrefix) {
				continue
			}
			d.Keys++
			d.Bytes += int64(len(kv.Value))
			num(int64(len(kv.Key)))
			h.Write(kv.Key)
			num(int64(len(kv.Value)))
			h.Write(kv.Value)
			num(kv.CreateRevision)
			num(kv.ModRevision)
			num(kv.Version)
			num(kv.Lease)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		switch {
		case page < 4<<20 && limit < 4096:
			limit *= 2
		case page > 16<<20 && limit > 1:
			limit /= 2
		}
	}
	d.Digest = hex.EncodeToString(h.Sum(nil))
	return d, nil
}

// CheckHashKV checks that every running member has the same HashKV at the
// lowest revision they all have applied, with the same compact revision. A
// compaction or a write racing the reads makes it try again (five times). When that
// revision is the compact revision itself, which etcd 3.4 refuses to hash,
// and every member is at it, each member hashes its current revision
// (HashKV at 0) and must still be at it. ctx bounds it.
func (c *Cluster) CheckHashKV(ctx context.Context) error {
	var last error
	for range 5 {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		hashes, err := c.hashKV(ctx)
		if err == nil {
			return compareHashes(hashes)
		}
		if !errors.Is(err, errRaced) {
			return err
		}
		last = err
	}
	return last
}

var errRaced = errors.New("raced with a write or a compaction")

// memberHash is one member's HashKV.
type memberHash struct {
	member  string
	rev     int64
	hash    uint32
	compact int64
}

func (c *Cluster) hashKV(ctx context.Context) ([]memberHash, error) {
	rev := int64(math.MaxInt64)
	var ms []*Member
	allEqual, first := true, int64(0)
	for _, m := range c.members {
		if !m.Running() {
			continue
		}
		st, err := m.Status(ctx)
		if err != nil {
			return nil, err
		}
		if first == 0 {
			first = st.Header.Revision
		}
		allEqual = allEqual && st.Header.Revision == first
		rev = min(rev, st.Header.Revision)
		ms = append(ms, m)
	}
	var out []memberHash
	for _, m := range ms {
		cli, err := m.client()
		if err != nil {
			return nil, err
		}
		hctx, cancel := context.WithTimeout(ctx, time.Minute)
		r, err := cli.HashKV(hctx, m.ClientURL, rev)
		if errors.Is(err, rpctypes.ErrCompacted) && allEqual {
			r, err = cli.HashKV(hctx, m.ClientURL, 0)
			if err == nil && r.Header.Revision != rev {
				err = fmt.Errorf("revision moved from %d to %d: %w", rev, r.Header.Revision, errRaced)
			}
		}
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			err = fmt.Errorf("%w: %w", err, errRaced) // a compaction moved past rev meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("hashkv of %s at %d: %w", m.Name, rev, err)
		}
		out = append(out, memberHash{m.Name, rev, r.Hash, r.CompactRevision})
	}
	for _, h := range out[1:] {
		if h.compact != out[0].compact {
			return nil, fmt.Errorf("compact revisions differ at revision %d (%v): %w", rev, out, errRaced)
		}
	}
	return out, nil
}

// compareHashes returns an error naming the first two members whose hashes
// differ.
func compareHashes(hs []memberHash) error {
	for _, h := range hs[1:] {
		if h.hash != hs[0].hash {
			return fmt.Errorf("HashKV at revision %d differs: %s has %d, %s has %d (compact revision %d)",
				h.rev, hs[0].member, hs[0].hash, h.member, h.hash, h.compact)
		}
	}
	return nil
}
