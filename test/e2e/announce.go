//go:build linux

package e2e

// Reading the agents' announcements as the observer's watch saw them: what
// each agent says now, waiting for an agent to say something, and the end
// of an agent's session. Announcements are the agents' own account: the
// scenarios use them to know when an agent waits and why it did not act,
// never to judge the invariants (that is etcd's account, in judge.go).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Current returns the latest announcement of every agent session whose key
// the observer has not seen deleted, in revision order: what every agent
// says now (an agent that died says it until its lease expires).
func (o *Observer) Current() []Announcement {
	latest := map[int64]Announcement{}
	for _, a := range o.Announcements() {
		latest[a.Lease] = a
	}
	var out []Announcement
	for _, a := range latest {
		if !a.Deleted {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b Announcement) int { return int(a.Revision - b.Revision) })
	return out
}

// WaitAnnouncement waits until an announcement seen so far (at any time,
// deletions included) satisfies cond, and returns the first that does. what
// names the condition in the error. ctx bounds the wait.
func (o *Observer) WaitAnnouncement(ctx context.Context, what string, cond func(Announcement) bool) (Announcement, error) {
	var found Announcement
	err := o.Wait(ctx, what, func() bool {
		for _, a := range o.Announcements() {
			if cond(a) {
				found = a
				return true
			}
		}
		return false
	})
	return found, err
}

// WaitPending waits until every member of ms has an agent whose current
// announcement is "pending": it has asked for a turn and waits, for the lock
// or, as the leader's agent, for the followers. It returns those
// announcements, by member name. ctx bounds the wait.
func (o *Observer) WaitPending(ctx context.Context, ms []*Member) (map[string]Announcement, error) {
	out := map[string]Announcement{}
	err := o.Wait(ctx, "every agent pending", func() bool {
		clear(out)
		for _, a := range o.Current() {
			if a.State != "pending" {
				continue
			}
			for _, m := range ms {
				if m.ID == a.Member {
					out[m.Name] = a
				}
			}
		}
		return len(out) == len(ms)
	})
	if err != nil {
		return nil, fmt.Errorf("%w (announcements now: %v)", err, o.Current())
	}
	return out, nil
}

// SessionEnded returns the deletion of the announcement of the agent
// session with the given lease — etcd deleted it because the lease was
// revoked or expired — and whether the observer has seen it.
func (o *Observer) SessionEnded(lease int64) (Announcement, bool) {
	for _, a := range o.Announcements() {
		if a.Lease == lease && a.Deleted {
			return a, true
		}
	}
	return Announcement{}, false
}

// String formats an announcement for messages.
func (a Announcement) String() string {
	if a.Deleted {
		return fmt.Sprintf("{member %x lease %x deleted at rev %d}", a.Member, a.Lease, a.Revision)
	}
	return fmt.Sprintf("{member %x lease %x %s leader=%v reason=%q rev %d}", a.Member, a.Lease, a.State, a.Leader, a.Reason, a.Revision)
}

// KeyEvent is one change of a key under the lock prefix, as the observer's
// watch saw it.
type KeyEvent struct {
	Key      string
	Deleted  bool
	Revision int64 // etcd's revision of the change
	Lease    int64 // the lease of a put; 0 for a deletion
	Seen     time.Time
}

// KeyEvents returns every change the observer has seen of the keys under
// prefix (a full key, such as the cluster's LockPrefix+"defrag/"), in watch
// order.
func (o *Observer) KeyEvents(prefix string) []KeyEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []KeyEvent
	for _, e := range o.keyEvents {
		if strings.HasPrefix(e.Key, prefix) {
			out = append(out, e)
		}
	}
	return out
}
