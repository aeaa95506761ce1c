package etcdtest

import (
	"context"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// HoldSnapshot holds a snapshot stream of member m open (etcddata.Hold), so
// that a defrag of m lasts until the hold is released: Release ends it, and
// so does Cluster.Close. The member's database must have at least
// etcddata.MinHeldSnapshot bytes; ctx bounds the start.
func (c *Cluster) HoldSnapshot(ctx context.Context, m *Member) (*etcddata.HeldSnapshot, error) {
	cli, err := c.Client(ctx, m.ClientURL)
	if err != nil {
		return nil, err
	}
	h, err := etcddata.Hold(ctx, cli, m.Name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.holds = append(c.holds, h)
	c.mu.Unlock()
	return h, nil
}
