package coord

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// State is what an agent is doing, as its peers see it.
type State string

// The states an agent announces.
const (
	// StateStarting: a new session; the agent has not decided anything yet
	// (its cycle goes on at once). Active: the leader's agent waits for its
	// decision as for a turn.
	StateStarting State = "starting"
	// StateIdle: not asking for a turn. Written at the end of every cycle,
	// whatever it decided.
	StateIdle State = "idle"
	// StatePending: its member needs a defrag; it is waiting for its turn.
	StatePending State = "pending"
	// StateLocked: it holds the lock and checks the cluster.
	StateLocked State = "locked"
	// StateDefragmenting: its member is being defragmented.
	StateDefragmenting State = "defragmenting"
	// StateVerifying: its turn is over (the lock is released) and it checks
	// the result; not active: the leader's agent need not wait for it.
	StateVerifying State = "verifying"
	// StateRecovering: it holds the NOSPACE queue and brings the cluster back.
	StateRecovering State = "recovering"
)

// Active reports whether an agent in this state has asked for a turn and not
// finished it.
func (s State) Active() bool { return s != StateIdle && s != StateVerifying && s != "" }

// Announcement is what one agent tells its peers about itself. It is stored
// under agents/<member>/<lease> with the agent's session lease, so it vanishes
// with the agent.
type Announcement struct {
	// Member is the ID of the member the agent runs beside (from the key).
	Member uint64 `json:"-"`
	// Lease is the agent's session lease (from the key).
	Lease clientv3.LeaseID `json:"-"`
	// Revision is the revision at which the announcement was last written.
	Revision int64 `json:"-"`

	State State `json:"state"`
	// Leader tells whether the member led the cluster when this was written.
	Leader bool `json:"leader"`
	// DBQuotaUsage and DBSizeFree are the member's dbSize / dbQuota and
	// reclaimable bytes when this was written: among followers that ask for
	// a turn at once, the one nearest its quota goes first.
	DBQuotaUsage float64 `json:"db_quota_usage,omitempty"`
	DBSizeFree   int64   `json:"db_size_free,omitempty"`
	// Reason is the reason of the agent's last decision.
	Reason string `json:"reason,omitempty"`
	// Agent names the process for humans (host and PID).
	Agent   string    `json:"agent,omitempty"`
	Version string    `json:"version,omitempty"`
	Time    time.Time `json:"time"`
}

// OpAnnounce is the put of an announcement, for a fenced transaction: the
// same key, value and lease as Announce.
func OpAnnounce(s *lock.Session, keys Keys, member uint64, a Announcement) (clientv3.Op, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return clientv3.Op{}, fmt.Errorf("encode announcement: %w", err)
	}
	return clientv3.OpPut(keys.Agent(member, s.Lease()), string(b), clientv3.WithLease(s.Lease())), nil
}

// Announce writes the announcement of the session's agent for member, bound to
// the session's lease, and returns the revision of the write. ctx bounds the
// request.
func Announce(ctx context.Context, s *lock.Session, keys Keys, member uint64, a Announcement) (int64, error) {
	op, err := OpAnnounce(s, keys, member, a)
	if err != nil {
		return 0, err
	}
	resp, err := s.Client().Do(ctx, op)
	if err != nil {
		return 0, fmt.Errorf("announce %s: %w", op.KeyBytes(), err)
	}
	return resp.Put().Header.Revision, nil
}

// Announcements reads every agent's announcement and the revision they were
// read at. ctx bounds the request.
func Announcements(ctx context.Context, cli clientv3.KV, keys Keys) ([]Announcement, int64, error) {
	resp, err := cli.Get(ctx, keys.Agents(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", keys.Agents(), err)
	}
	out := make([]Announcement, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, ok := decodeAnnouncement(keys, kv)
		if ok {
			out = append(out, a)
		}
	}
	return out, resp.Header.Revision, nil
}

// decodeAnnouncement parses one announcement key and value; keys or values
// that are not announcements are skipped.
func decodeAnnouncement(keys Keys, kv *mvccpb.KeyValue) (Announcement, bool) {
	rest, ok := strings.CutPrefix(string(kv.Key), keys.Agents())
	if !ok {
		return Announcement{}, false
	}
	memberHex, leaseHex, ok := strings.Cut(rest, "/")
	if !ok {
		return Announcement{}, false
	}
	member, err := strconv.ParseUint(memberHex, 16, 64)
	if err != nil {
		return Announcement{}, false
	}
	lease, err := strconv.ParseInt(leaseHex, 16, 64)
	if err != nil {
		return Announcement{}, false
	}
	var a Announcement
	if err := json.Unmarshal(kv.Value, &a); err != nil {
		return Announcement{}, false
	}
	a.Member, a.Lease, a.Revision = member, clientv3.LeaseID(lease), kv.ModRevision
	return a, true
}

// WatchAnnouncements calls fn for announcements written after revision rev,
// until ctx ends: for every write its watch reports and, because a watch
// through a member that stalls reports nothing until that member answers
// again, for the latest announcement of every agent read every Poll. fn sees
// each write of a key at most once, in increasing revision per key; writes
// overwritten between two reads of a stalled watch are not seen, deletions
// never. It returns the watch error that ended it, or ctx's error.
func WatchAnnouncements(ctx context.Context, cli lock.Client, keys Keys, rev int64, fn func(Announcement)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	seen := map[string]int64{} // key → the revision last passed to fn
	deliver := func(a Announcement) {
		k := keys.Agent(a.Member, a.Lease)
		if a.Revision > rev && a.Revision > seen[k] {
			seen[k] = a.Revision
			fn(a)
		}
	}
	poll := time.NewTicker(lock.Poll)
	defer poll.Stop()
	wch := cli.Watch(wctx, keys.Agents(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok {
				if err := ctx.Err(); err != nil {
					return err
				}
				return fmt.Errorf("watch %s: ended", keys.Agents())
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("watch %s: %w", keys.Agents(), err)
			}
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				if a, ok := decodeAnnouncement(keys, ev.Kv); ok {
					deliver(a)
				}
			}
		case <-poll.C:
			rctx, rcancel := context.WithTimeout(ctx, pollReadTimeout)
			anns, _, err := Announcements(rctx, cli, keys)
			rcancel()
			if err != nil {
				continue // the watch may still report; the next poll reads again
			}
			for _, a := range anns {
				deliver(a)
			}
		}
	}
}

// pollReadTimeout bounds the read of a wait's poll.
const pollReadTimeout = 5 * time.Second

// WaitChange blocks until a key under prefix is written or deleted after
// revision rev, or ctx ends (then it returns ctx's error).
func WaitChange(ctx context.Context, cli lock.Client, prefix string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", prefix, err)
		}
		if len(wr.Events) > 0 {
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch %s: ended", prefix)
}
