package etcdtest

import (
	"context"
	"fmt"
	"io"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MinHeldSnapshot is the least database size HoldSnapshot can hold: a
// smaller one fits in the stream's buffers, etcd sends it whole and closes
// its read transaction at once.
const MinHeldSnapshot = 32 << 20

// HeldSnapshot is a snapshot stream of one member that nobody reads: etcd
// keeps a read transaction open on the member's database until it is
// released, as a slow backup does. A defrag of that member cannot swap its
// files until then, so it lasts as long as the snapshot is held: a defrag of
// minutes without gigabytes of data.
type HeldSnapshot struct {
	cli    *clientv3.Client
	rc     io.ReadCloser
	cancel context.CancelFunc
	once   sync.Once
}

// HoldSnapshot opens a snapshot stream of member m and reads its first byte.
// The member's database must have at least MinHeldSnapshot bytes. ctx
// bounds the start; Release ends the hold (Cluster.Close does too).
func (c *Cluster) HoldSnapshot(ctx context.Context, m *Member) (*HeldSnapshot, error) {
	cli, err := c.Client(ctx, m.ClientURL)
	if err != nil {
		return nil, err
	}
	st, err := cli.Status(ctx, m.ClientURL)
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("hold a snapshot of %s: %w", m.Name, err)
	}
	if st.DbSize < MinHeldSnapshot {
		_ = cli.Close()
		return nil, fmt.Errorf("hold a snapshot of %s: its database has %d bytes, want at least %d", m.Name, st.DbSize, MinHeldSnapshot)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h := &HeldSnapshot{cli: cli, cancel: cancel}
	rc, err := cli.Snapshot(sctx)
	if err != nil {
		h.Release()
		return nil, fmt.Errorf("hold a snapshot of %s: %w", m.Name, err)
	}
	h.rc = rc
	first := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := io.ReadFull(rc, b[:])
		first <- err
	}()
	select {
	case err = <-first:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if err != nil {
		h.Release()
		return nil, fmt.Errorf("hold a snapshot of %s: first bytes: %w", m.Name, err)
	}
	c.mu.Lock()
	c.holds = append(c.holds, h)
	c.mu.Unlock()
	return h, nil
}

// Release ends the snapshot stream: etcd's read transaction ends, and a
// defrag of the member that waited for it goes on. Only the first call does
// anything.
func (h *HeldSnapshot) Release() {
	h.once.Do(func() {
		h.cancel()
		if h.rc != nil {
			_ = h.rc.Close()
		}
		_ = h.cli.Close()
	})
}
