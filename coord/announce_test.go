package coord_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// when is the time in the announcements of these tests: UTC and without a
// monotonic reading, so it survives a JSON round trip unchanged.
var when = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// announceT announces a for member and returns the revision of the write.
func announceT(t *testing.T, s *lock.Session, keys coord.Keys, member uint64, a coord.Announcement) int64 {
	t.Helper()
	rev, err := coord.Announce(t.Context(), s, keys, member, a)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	return rev
}

// announcementsT returns every announcement by member and the revision they
// were read at.
func announcementsT(t *testing.T, cli *clientv3.Client, keys coord.Keys) (map[uint64]coord.Announcement, int64) {
	t.Helper()
	anns, rev, err := coord.Announcements(t.Context(), cli, keys)
	if err != nil {
		t.Fatalf("Announcements: %v", err)
	}
	byMember := make(map[uint64]coord.Announcement)
	for _, a := range anns {
		if _, dup := byMember[a.Member]; dup {
			t.Fatalf("two announcements of member %x", a.Member)
		}
		byMember[a.Member] = a
	}
	return byMember, rev
}

func TestAnnouncements(t *testing.T) {
	t.Parallel()
	c, cli := newCluster(t)
	keys := coord.NewKeys("/announce")
	ms := c.Members()
	s0, s1 := newSession(t, cli), newSession(t, cli)
	a0 := coord.Announcement{State: coord.StatePending, Leader: true, Reason: "rule", Agent: "host-a/1", Version: "v1", Time: when}
	a1 := coord.Announcement{State: coord.StateIdle, Agent: "host-b/2", Time: when.Add(time.Minute)}
	rev0 := announceT(t, s0, keys, ms[0].ID, a0)
	rev1 := announceT(t, s1, keys, ms[1].ID, a1)

	got, readRev := announcementsT(t, cli, keys)
	if readRev < rev1 {
		t.Errorf("Announcements read at revision %d, want at least %d", readRev, rev1)
	}
	a0.Member, a0.Lease, a0.Revision = ms[0].ID, s0.Lease(), rev0
	a1.Member, a1.Lease, a1.Revision = ms[1].ID, s1.Lease(), rev1
	want := map[uint64]coord.Announcement{ms[0].ID: a0, ms[1].ID: a1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Announcements =\n%+v\nwant\n%+v", got, want)
	}

	// A new announcement replaces the agent's old one.
	a1.State, a1.Reason = coord.StateLocked, "my turn"
	a1.Revision = announceT(t, s1, keys, ms[1].ID, a1)
	got, _ = announcementsT(t, cli, keys)
	if g := got[ms[1].ID]; !reflect.DeepEqual(g, a1) {
		t.Errorf("after a second Announce: %+v, want %+v", g, a1)
	}

	// The announcement goes with the session.
	if err := s0.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, _ = announcementsT(t, cli, keys)
	if _, ok := got[ms[0].ID]; ok || len(got) != 1 {
		t.Errorf("Announcements after member %x's session closed = %+v, want only member %x", ms[0].ID, got, ms[1].ID)
	}
}

func TestAnnouncementsSkipOthers(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	keys := coord.NewKeys("/skip/")
	s := newSession(t, cli)
	const member = 0xabc
	rev := announceT(t, s, keys, member, coord.Announcement{State: coord.StateIdle, Time: when})
	others := []struct{ name, key, value string }{
		{"member not hex", keys.Agents() + "xyz/1", `{"state":"idle"}`},
		{"no lease", keys.Agents() + "1a", `{"state":"idle"}`},
		{"lease not hex", keys.Agents() + "1a/zz", `{"state":"idle"}`},
		{"value not JSON", keys.Agents() + "1b/2", `idle`},
		{"beside the agents prefix", keys.Prefix() + "agents-old/1c/3", `{"state":"idle"}`},
	}
	for _, o := range others {
		if _, err := cli.Put(t.Context(), o.key, o.value); err != nil {
			t.Fatalf("%s: %v", o.name, err)
		}
	}
	got, _ := announcementsT(t, cli, keys)
	want := map[uint64]coord.Announcement{member: {Member: member, Lease: s.Lease(), Revision: rev, State: coord.StateIdle, Time: when}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Announcements among other keys = %+v, want %+v", got, want)
	}
}

func TestWatchAnnouncements(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	keys := coord.NewKeys("/watch/")
	s := newSession(t, cli)
	other := newSession(t, cli)
	const member, otherMember = 0x1, 0x2

	// Written at or before rev: not delivered.
	rev := announceT(t, s, keys, member, coord.Announcement{State: coord.StateIdle, Reason: "before", Time: when})

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	seen := make(chan coord.Announcement, 16)
	done := make(chan error, 1)
	go func() {
		done <- coord.WatchAnnouncements(ctx, cli, keys, rev, func(a coord.Announcement) { seen <- a })
	}()

	// Written after rev, in this order: a put, a put of another agent, its
	// deletion (the session ends), a key that is not an announcement, and a
	// last put.
	want := []string{"1:pending", "2:idle", "1:locked"}
	announceT(t, s, keys, member, coord.Announcement{State: coord.StatePending, Time: when})
	announceT(t, other, keys, otherMember, coord.Announcement{State: coord.StateIdle, Time: when})
	if err := other.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(t.Context(), keys.Agents()+"not-an-announcement", "{}"); err != nil {
		t.Fatal(err)
	}
	last := announceT(t, s, keys, member, coord.Announcement{State: coord.StateLocked, Time: when})

	var got []string
	for range want {
		a := receive(t, seen, "an announcement from WatchAnnouncements")
		got = append(got, fmt.Sprintf("%x:%s", a.Member, a.State))
		if a.Member == member && a.State == coord.StateLocked {
			if a.Revision != last || a.Lease != s.Lease() {
				t.Errorf("last announcement: revision %d lease %x, want %d and %x", a.Revision, int64(a.Lease), last, int64(s.Lease()))
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("WatchAnnouncements delivered %v, want %v (puts after revision %d, no deletions)", got, want, rev)
	}

	cancel()
	if err := receive(t, done, "WatchAnnouncements to return"); !errors.Is(err, context.Canceled) {
		t.Errorf("WatchAnnouncements after cancel: err = %v, want %v", err, context.Canceled)
	}
	select {
	case a := <-seen:
		t.Errorf("WatchAnnouncements delivered %+v beyond the %d expected", a, len(want))
	default:
	}
}

func TestWaitChange(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const short = 200 * time.Millisecond
	tests := []struct {
		name string
		// change runs after the revision WaitChange starts from is taken.
		change  func(t *testing.T, prefix string)
		wantErr error
	}{
		{
			name:   "put under the prefix",
			change: func(t *testing.T, prefix string) { put(t, cli, prefix+"k") },
		},
		{
			name: "delete under the prefix",
			change: func(t *testing.T, prefix string) {
				if _, err := cli.Delete(t.Context(), prefix+"existing"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:    "no change",
			change:  func(*testing.T, string) {},
			wantErr: context.DeadlineExceeded,
		},
		{
			name:    "change beside the prefix",
			change:  func(t *testing.T, prefix string) { put(t, cli, prefix[:len(prefix)-1]+"-other/k") },
			wantErr: context.DeadlineExceeded,
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/wait-change/%d/", i)
			rev := put(t, cli, prefix+"existing")
			tt.change(t, prefix)
			ctx := t.Context()
			if tt.wantErr != nil {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, short)
				defer cancel()
			}
			if err := coord.WaitChange(ctx, cli, prefix, rev); !errors.Is(err, tt.wantErr) {
				t.Errorf("WaitChange: err = %v, want %v", err, tt.wantErr)
			}
		})
	}

	t.Run("change while waiting", func(t *testing.T) {
		const prefix = "/wait-change/later/"
		rev := storeRevision(t, cli)
		done := make(chan error, 1)
		go func() { done <- coord.WaitChange(t.Context(), cli, prefix, rev) }()
		put(t, cli, prefix+"k")
		if err := receive(t, done, "WaitChange to return"); err != nil {
			t.Errorf("WaitChange: err = %v, want nil", err)
		}
	})
}

func TestStateActive(t *testing.T) {
	tests := []struct {
		state coord.State
		want  bool
	}{
		{"", false},
		{coord.StateIdle, false},
		{coord.StateStarting, true},
		{coord.StatePending, true},
		{coord.StateLocked, true},
		{coord.StateDefragmenting, true},
		{coord.StateRecovering, true},
	}
	for _, tt := range tests {
		if got := tt.state.Active(); got != tt.want {
			t.Errorf("State(%q).Active() = %v, want %v", tt.state, got, tt.want)
		}
	}
}

// put writes key and returns the revision of the write.
func put(t *testing.T, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Put(t.Context(), key, "v")
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}
