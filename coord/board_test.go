package coord_test

import (
	"errors"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// TestMarkInFlight: the in-flight record and the announcement land in one
// write while the lock is held, and neither lands once it is lost.
func TestMarkInFlight(t *testing.T) {
	t.Parallel()
	c, cli := newCluster(t)
	b := coord.NewBoard(cli, "/inflight")
	member := c.Members()[0].ID
	s := newSession(t, cli)
	m := b.TurnLock(s)
	if err := m.Lock(t.Context()); err != nil {
		t.Fatalf("Lock: %v", err)
	}
	ann, err := b.OpAnnounce(s, member, coord.Announcement{State: coord.StateDefragmenting, Time: when})
	if err != nil {
		t.Fatalf("OpAnnounce: %v", err)
	}
	rec := coord.InFlight{Member: "a", Endpoint: "http://a:2379", Start: when, Deadline: when}
	rev, err := b.MarkInFlight(t.Context(), m, member, rec, &ann)
	if err != nil {
		t.Fatalf("MarkInFlight: %v", err)
	}
	recs, bad, err := b.InFlight(t.Context())
	if err != nil || len(bad) > 0 {
		t.Fatalf("InFlight: %v %v", err, bad)
	}
	if got, ok := recs[member]; !ok || got.Revision != rev || got.Value != rec {
		t.Fatalf("in-flight record %+v, want %+v at revision %d", got, rec, rev)
	}
	anns, _, err := b.Announcements(t.Context())
	if err != nil {
		t.Fatalf("Announcements: %v", err)
	}
	if len(anns) != 1 || anns[0].State != coord.StateDefragmenting || anns[0].Revision != rev {
		t.Fatalf("announcements %+v, want one %q at revision %d", anns, coord.StateDefragmenting, rev)
	}

	// The lock lost (its key gone, as when the lease expires) while the
	// mutex still believes it holds it: etcd refuses the write, all of it.
	if _, err := cli.Delete(t.Context(), m.Key()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(t.Context(), b.Keys().Defrag(member)); err != nil {
		t.Fatal(err)
	}
	idle, err := b.OpAnnounce(s, member, coord.Announcement{State: coord.StateIdle, Time: when})
	if err != nil {
		t.Fatalf("OpAnnounce: %v", err)
	}
	if _, err := b.MarkInFlight(t.Context(), m, member, rec, &idle); !errors.Is(err, lock.ErrNotOwner) {
		t.Fatalf("MarkInFlight without the lock: %v, want %v", err, lock.ErrNotOwner)
	}
	resp, err := cli.Get(t.Context(), b.Keys().Defrag(member), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if anns, _, _ := b.Announcements(t.Context()); resp.Count != 0 || len(anns) != 1 || anns[0].State != coord.StateDefragmenting {
		t.Fatalf("without the lock: %d in-flight record(s), announcements %+v; want none and the earlier one", resp.Count, anns)
	}
}
