package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// observer tells the round from outside the agents: it watches the agents'
// keys in etcd (their announcements and the lock's queue) and polls the
// cluster's record of etcd's own defrag log lines. Its state belongs to its
// goroutine.
type observer struct {
	d    *demo
	n    *narrator
	keys coord.Keys
	rev  int64 // the watch starts after this revision

	leaseMember map[int64]uint64             // session lease → member, from the announcement keys
	ann         map[int64]coord.Announcement // latest announcement per lease
	leaderSince map[int64]time.Time          // when a leader's agent announced pending: its wait began
	queue       map[int64]int64              // lease → create revision of its key in the lock's queue
	queuedAt    map[int64]time.Time          // lease → when it queued
	holder      int64                        // lease whose key is oldest in the queue, 0 for none
	told        int                          // defrags whose start was told
	ended       map[int]bool                 // defrags whose end was told
	lookups     sync.WaitGroup               // Status reads after a defrag
	completeCh  chan struct{}                // closed once every member was defragmented and every agent is idle
	goneCh      chan struct{}                // closed once every agent's announcement is gone again
	seenAgents  bool                         // some announcement was seen
	completeSet bool
	goneSet     bool
}

// newObserver reads the revision to watch from; start it with run.
func newObserver(ctx context.Context, d *demo, n *narrator, keys coord.Keys) (*observer, error) {
	resp, err := d.cli.Get(ctx, keys.Prefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", keys.Prefix(), err)
	}
	return &observer{
		d: d, n: n, keys: keys, rev: resp.Header.Revision,
		leaseMember: map[int64]uint64{},
		ann:         map[int64]coord.Announcement{},
		leaderSince: map[int64]time.Time{},
		queue:       map[int64]int64{},
		queuedAt:    map[int64]time.Time{},
		ended:       map[int]bool{},
		completeCh:  make(chan struct{}),
		goneCh:      make(chan struct{}),
	}, nil
}

// complete returns a channel that is closed once every member has been
// defragmented (by etcd's account), no agent holds or waits for the lock and
// every agent announces itself idle.
func (o *observer) complete() <-chan struct{} { return o.completeCh }

// gone returns a channel that is closed once the announcements of every agent
// seen have been deleted (their sessions ended).
func (o *observer) gone() <-chan struct{} { return o.goneCh }

// run observes until ctx ends, then waits for its Status reads.
func (o *observer) run(ctx context.Context) {
	defer o.lookups.Wait()
	wch := o.d.cli.Watch(clientv3.WithRequireLeader(ctx), o.keys.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(o.rev+1))
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case wr, ok := <-wch:
			switch {
			case !ok:
				wch = nil
			case wr.Err() != nil:
				if ctx.Err() == nil {
					o.n.say(time.Now(), "keys", "the watch on %s failed: %v", o.keys.Prefix(), wr.Err())
				}
				wch = nil
			default:
				for _, ev := range wr.Events {
					o.event(ev)
				}
			}
		case <-tick.C:
			o.pollDefrags()
		}
		o.check()
	}
}

// check closes the completion channels when their time has come.
func (o *observer) check() {
	if !o.goneSet && o.seenAgents && len(o.ann) == 0 {
		o.goneSet = true
		close(o.goneCh)
	}
	if o.completeSet || o.holder != 0 || len(o.queue) > 0 || len(o.ann) < len(o.d.c.Members()) {
		return
	}
	for _, a := range o.ann {
		if a.State.Active() {
			return
		}
	}
	done := map[uint64]bool{}
	for _, d := range o.d.c.Defrags() {
		if !d.Running() {
			done[d.MemberID] = true
		}
	}
	for _, m := range o.d.c.Members() {
		if !done[m.ID] {
			return
		}
	}
	o.completeSet = true
	close(o.completeCh)
}

// event tells one change under the agents' prefix.
func (o *observer) event(ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	now := time.Now()
	switch {
	case strings.HasPrefix(key, o.keys.Agents()):
		member, lease, ok := o.parseAgentKey(key)
		if !ok {
			return
		}
		if ev.Type == mvccpb.DELETE {
			o.agentGone(now, lease)
			return
		}
		var a coord.Announcement
		if err := json.Unmarshal(ev.Kv.Value, &a); err != nil {
			return
		}
		a.Member, a.Lease, a.Revision = member, clientv3.LeaseID(lease), ev.Kv.ModRevision
		at := now
		if !a.Time.IsZero() && a.Time.Before(now) {
			at = a.Time // the agent's own clock: immune to a watch delayed by a defragmenting member
		}
		o.announced(at, lease, a)
	case strings.HasPrefix(key, o.keys.Lock()):
		lease, err := strconv.ParseInt(strings.TrimPrefix(key, o.keys.Lock()), 16, 64)
		if err != nil {
			return
		}
		if ev.Type == mvccpb.DELETE {
			o.unqueued(now, lease)
		} else if _, ok := o.queue[lease]; !ok {
			o.queued(now, lease, ev.Kv.CreateRevision)
		}
	}
}

func (o *observer) parseAgentKey(key string) (member uint64, lease int64, ok bool) {
	memberHex, leaseHex, ok := strings.Cut(strings.TrimPrefix(key, o.keys.Agents()), "/")
	if !ok {
		return 0, 0, false
	}
	member, err1 := strconv.ParseUint(memberHex, 16, 64)
	lease, err2 := strconv.ParseInt(leaseHex, 16, 64)
	return member, lease, err1 == nil && err2 == nil
}

// who names the agent of a session lease.
func (o *observer) who(lease int64) string {
	member, ok := o.leaseMember[lease]
	if !ok {
		return fmt.Sprintf("the holder of lease %x", lease)
	}
	s := o.d.name(member) + "'s agent"
	if o.ann[lease].Leader {
		s += " (leader)"
	}
	return s
}

// announced tells a change of an agent's announcement.
func (o *observer) announced(at time.Time, lease int64, a coord.Announcement) {
	prev, seen := o.ann[lease]
	o.ann[lease] = a
	o.leaseMember[lease] = a.Member
	o.seenAgents = true
	who := o.who(lease)
	if seen && prev.State == a.State && prev.Reason == a.Reason {
		return // a refresh
	}
	switch a.State {
	case coord.StateStarting:
		o.n.say(at, "keys", "%s is up: session lease %x, announces itself", who, lease)
	case coord.StateIdle:
		switch {
		case !seen:
			o.n.say(at, "keys", "%s is up: session lease %x, announces itself idle", who, lease)
		case a.Reason != "":
			o.n.say(at, "keys", "%s decided: no turn (%s)", who, a.Reason)
		}
		// Idle after a turn: the lock's release and the agent's cycle event tell it.
	case coord.StatePending:
		if a.Leader {
			if _, waiting := o.leaderSince[lease]; !waiting {
				o.leaderSince[lease] = at
			}
			o.n.say(at, "keys", "%s: the rule fires → pending; as the leader it lets the followers go first", who)
		} else {
			o.n.say(at, "keys", "%s: the rule fires → pending", who)
		}
	case coord.StateRecovering:
		o.n.say(at, "keys", "%s brings the cluster back from NOSPACE", who)
	}
	// locked and defragmenting: the lock's queue and etcd's log lines tell it.
}

// agentGone tells that an agent's announcement was deleted.
func (o *observer) agentGone(at time.Time, lease int64) {
	if _, ok := o.ann[lease]; !ok {
		return
	}
	o.n.say(at, "keys", "%s is gone: session ended, announcement deleted", o.who(lease))
	delete(o.ann, lease)
}

// queued tells that a session entered the lock's queue.
func (o *observer) queued(at time.Time, lease, createRev int64) {
	o.queue[lease] = createRev
	o.queuedAt[lease] = at
	how := ""
	if since, ok := o.leaderSince[lease]; ok {
		how = fmt.Sprintf("%s after its pending announcement, the followers are done; it ", seconds(at.Sub(since)))
		delete(o.leaderSince, lease)
	}
	ahead := 0
	for _, rev := range o.queue {
		if rev < createRev {
			ahead++
		}
	}
	if o.newHolder() == lease {
		o.holder = lease
		o.n.say(at, "keys", "%s: %squeues for the lock and takes it at once", o.who(lease), how)
		return
	}
	o.n.say(at, "keys", "%s: %squeues for the lock, %d ahead", o.who(lease), how, ahead)
}

// unqueued tells that a session left the lock's queue, and who holds the
// lock now.
func (o *observer) unqueued(at time.Time, lease int64) {
	if _, ok := o.queue[lease]; !ok {
		return
	}
	delete(o.queue, lease)
	if lease == o.holder {
		o.n.say(at, "keys", "%s releases the lock", o.who(lease))
	} else {
		o.n.say(at, "keys", "%s leaves the lock's queue", o.who(lease))
	}
	next := o.newHolder()
	if next != 0 && next != o.holder {
		o.n.say(at, "keys", "%s takes the lock after %s in the queue", o.who(next), seconds(at.Sub(o.queuedAt[next])))
	}
	o.holder = next
}

// newHolder returns the lease whose key is oldest in the queue.
func (o *observer) newHolder() int64 {
	var holder, oldest int64
	for lease, rev := range o.queue {
		if holder == 0 || rev < oldest {
			holder, oldest = lease, rev
		}
	}
	return holder
}

// pollDefrags tells the defrags that etcd's log lines began or ended since
// the last poll; the end also tells the member's sizes after.
func (o *observer) pollDefrags() {
	ds := o.d.c.Defrags()
	for ; o.told < len(ds); o.told++ {
		d := ds[o.told]
		b := o.d.before[d.MemberID]
		o.n.say(d.Start, "etcd", "%s defragments: %s file, %s in use; it serves no reads or writes until done",
			d.Member, mib(b.DBSize), mib(b.InUse))
	}
	for i, d := range ds {
		if d.Running() || o.ended[i] {
			continue
		}
		o.ended[i] = true
		o.lookups.Add(1)
		go func() {
			defer o.lookups.Done()
			o.tellEnd(d)
		}()
	}
}

// tellEnd tells the end of a defrag with the member's sizes before and after.
func (o *observer) tellEnd(d etcdtest.Defrag) {
	if d.Err != "" {
		o.n.say(d.End, "etcd", "%s defrag FAILED after %s: %s", d.Member, millis(d.Duration()), d.Err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b := o.d.before[d.MemberID]
	after := "?"
	if m := o.d.c.MemberByID(d.MemberID); m != nil {
		if st, err := o.d.cli.Status(ctx, m.ClientURL); err == nil {
			after = fmt.Sprintf("%s (%s reclaimed)", mib(st.DbSize), mib(b.DBSize-st.DbSize))
		}
	}
	o.n.say(d.End, "etcd", "%s defragmented in %s: %s → %s", d.Member, millis(d.Duration()), mib(b.DBSize), after)
}
