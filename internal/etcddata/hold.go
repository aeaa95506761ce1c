package etcddata

import (
	"context"
	"fmt"
	"io"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MinHeldSnapshot is the least database size Hold can hold: etcd sends
// ahead of the reader up to gRPC's flow-control window (up to 16 MiB per
// stream) plus its own 32 KiB chunks, and a snapshot that fits in that is
// sent whole, its read transaction closed, while nobody reads.
const MinHeldSnapshot = 32 << 20

// HeldSnapshot is a snapshot stream of one member (what a backup job reads)
// of which the first byte was read and then nothing: while it is open, etcd
// keeps a read transaction on the member's bbolt file, and a defrag of that
// member, which must close the old file before it renames the new one into
// place, stays "defragmenting" by etcd's own account (log lines, inflight
// gauge) until the snapshot is released: a defrag of minutes without
// gigabytes of data.
type HeldSnapshot struct {
	cli    *clientv3.Client
	rc     io.ReadCloser
	cancel context.CancelFunc
	once   sync.Once
}

// Hold opens a snapshot stream through cli, a client whose only endpoint is
// the member's, and returns once etcd has begun sending (its read
// transaction is open). name names the member in errors. Hold owns cli from
// here on: Release closes it, and so does a failed Hold. The member's
// database must have at least MinHeldSnapshot bytes. ctx bounds the opening
// only; the stream stays open until Release.
func Hold(ctx context.Context, cli *clientv3.Client, name string) (*HeldSnapshot, error) {
	eps := cli.Endpoints()
	if len(eps) != 1 {
		_ = cli.Close()
		return nil, fmt.Errorf("hold a snapshot of %s: the client has %d endpoints, want the member's alone", name, len(eps))
	}
	st, err := cli.Status(ctx, eps[0])
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("hold a snapshot of %s: %w", name, err)
	}
	if st.DbSize < MinHeldSnapshot {
		_ = cli.Close()
		return nil, fmt.Errorf("hold a snapshot of %s: its database has %d bytes, want at least %d (etcd would send it whole and close its transaction)",
			name, st.DbSize, MinHeldSnapshot)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h := &HeldSnapshot{cli: cli, cancel: cancel}
	rc, err := cli.Snapshot(sctx)
	if err != nil {
		h.Release()
		return nil, fmt.Errorf("hold a snapshot of %s: %w", name, err)
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
		return nil, fmt.Errorf("hold a snapshot of %s: first bytes: %w", name, err)
	}
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
