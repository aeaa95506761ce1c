//go:build linux

package e2e

// What an operator (or a backup job) does to a cluster while the agents run:
// hold the agents' lock as `etcdctl lock` does, move leadership as
// `etcdctl move-leader` does, take a snapshot as a backup does. And what the
// scenarios read back from etcd about the agents: the lock queue, keys left
// behind by agents that are gone, an agent's /status.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// holdLockTTL is the lease TTL (seconds) of the harness's hold on the
// agents' lock: far longer than any stall of a busy machine, so the hold
// ends only by Release.
const holdLockTTL = 30

// HeldLock is the agents' lock held by the harness, the way an operator
// pauses every agent with `etcdctl lock <lock-prefix>lock` (the README's
// "pause every agent"): agents that ask for a turn queue behind it, and none
// takes a turn until Release. It is held through a client of its own, with a
// session of its own.
type HeldLock struct {
	// Key is the harness's key in the lock queue.
	Key string

	cli  *clientv3.Client
	sess *concurrency.Session
	mu   *concurrency.Mutex

	once sync.Once
	err  error
}

// lockQueuePrefix is the prefix of the agents' lock queue.
func (c *Cluster) lockQueuePrefix() string {
	p := c.LockPrefix
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p + "lock/"
}

// HoldLock takes the agents' lock and returns once the harness holds it.
// It talks only to the members not in avoid, so that killing or stopping
// those later does not stall the hold or its release. ctx bounds the wait
// for the lock. The lock is released by Release, at the latest at t's
// cleanup.
func (c *Cluster) HoldLock(ctx context.Context, t testing.TB, avoid ...*Member) (*HeldLock, error) {
	t.Helper()
	var eps []string
	for _, m := range c.members {
		if !slices.Contains(avoid, m) {
			eps = append(eps, m.ClientURL)
		}
	}
	cli, err := clientv3.New(c.clientConfig(eps...))
	if err != nil {
		return nil, fmt.Errorf("hold the lock: client of %v: %w", eps, err)
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(holdLockTTL))
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("hold the lock: session: %w", err)
	}
	h := &HeldLock{cli: cli, sess: sess, mu: concurrency.NewMutex(sess, strings.TrimSuffix(c.lockQueuePrefix(), "/"))}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		defer cancel()
		if err := h.Release(ctx); err != nil {
			t.Errorf("release the agents' lock at cleanup: %v", err)
		}
	})
	if err := h.mu.Lock(ctx); err != nil {
		return nil, fmt.Errorf("hold the lock %s: %w", c.lockQueuePrefix(), err)
	}
	h.Key = h.mu.Key()
	return h, nil
}

// Release gives the lock back (deletes the harness's queue key and revokes
// its session) and closes its client. Only the first call does anything.
// ctx bounds the requests.
func (h *HeldLock) Release(ctx context.Context) error {
	h.once.Do(func() {
		var errs []error
		if h.Key != "" {
			if err := h.mu.Unlock(ctx); err != nil {
				errs = append(errs, fmt.Errorf("unlock %s: %w", h.Key, err))
			}
		}
		h.sess.Orphan()
		if _, err := h.cli.Revoke(ctx, h.sess.Lease()); err != nil {
			errs = append(errs, fmt.Errorf("revoke the hold's lease: %w", err))
		}
		errs = append(errs, h.cli.Close())
		h.err = errors.Join(errs...)
	})
	return h.err
}

// LockWaiter is one key of the agents' lock queue.
type LockWaiter struct {
	Key            string
	Lease          int64 // the session lease of the waiter (an agent's, or the harness's)
	CreateRevision int64
}

// LockQueue returns the agents' lock queue, the holder first (the oldest
// key holds the lock). ctx bounds the read.
func (c *Cluster) LockQueue(ctx context.Context) ([]LockWaiter, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := c.Client().Get(ctx, c.lockQueuePrefix(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("read the lock queue: %w", err)
	}
	var out []LockWaiter
	for _, kv := range resp.Kvs {
		out = append(out, LockWaiter{Key: string(kv.Key), Lease: kv.Lease, CreateRevision: kv.CreateRevision})
	}
	return out, nil
}

// Etcdctl runs the etcdctl of the cluster's release (Etcd.Ctl) against
// endpoints (every member's client URL when empty) and returns its output.
// It fails when the release has no etcdctl. ctx bounds the run.
func (c *Cluster) Etcdctl(ctx context.Context, endpoints []string, args ...string) (string, error) {
	if c.Etcd.Ctl == "" {
		return "", fmt.Errorf("etcd %s has no etcdctl here (etcd 3.4: Debian's etcd-client package)", c.Etcd.Version)
	}
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*requestTimeout)
	defer cancel()
	argv := append([]string{"--endpoints=" + strings.Join(endpoints, ","), "--dial-timeout=2s", "--command-timeout=5s"}, args...)
	cmd := exec.CommandContext(ctx, c.Etcd.Ctl, argv...)
	cmd.Env = cleanEnv(c.owner+"etcdctl", []string{"ETCDCTL_API=3"})
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("etcdctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MoveLeader hands leadership to member to, as an operator does with
// `etcdctl move-leader` — with the release's etcdctl when there is one (3.5
// to 3.7; for 3.4, Debian's etcd-client package), else with the same
// request through the client API — and waits until every running member
// names to as the leader. ctx bounds it.
func (c *Cluster) MoveLeader(ctx context.Context, to *Member) error {
	lead, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	if lead != to {
		if c.Etcd.Ctl != "" {
			_, err = c.Etcdctl(ctx, []string{lead.ClientURL}, "move-leader", strconv.FormatUint(to.ID, 16))
		} else {
			var cli *clientv3.Client
			if cli, err = lead.client(); err == nil {
				rctx, cancel := context.WithTimeout(ctx, 2*requestTimeout)
				_, err = cli.MoveLeader(rctx, to.ID)
				cancel()
			}
		}
		if err != nil {
			return fmt.Errorf("move leadership from %s to %s: %w", lead.Name, to.Name, err)
		}
	}
	for {
		lead, err := c.Leader(ctx)
		if err == nil && lead == to {
			return nil
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("wait for %s to lead: %w (leader: %v)", to.Name, err, lead)
		}
	}
}

// HeldSnapshot is a snapshot stream of one member that nobody reads
// (etcddata.Hold): a defrag of the member lasts until it is released.
type HeldSnapshot = etcddata.HeldSnapshot

// HoldSnapshot holds a snapshot stream of the member open, through a client
// of its own, until Release, at the latest at t's cleanup. The member's
// database must have at least etcddata.MinHeldSnapshot bytes; ctx bounds
// the opening.
func (m *Member) HoldSnapshot(ctx context.Context, t testing.TB) (*HeldSnapshot, error) {
	t.Helper()
	cli, err := clientv3.New(m.c.clientConfig(m.ClientURL))
	if err != nil {
		return nil, fmt.Errorf("hold a snapshot of %s: %w", m.Name, err)
	}
	h, err := etcddata.Hold(ctx, cli, m.Name)
	if err != nil {
		return nil, err
	}
	t.Cleanup(h.Release)
	return h, nil
}

// Identity returns how the agent names itself in etcd (its announcements,
// the last/ and defrag/ records): "<hostname>/<pid>" of its current process.
func (a *Agent) Identity() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, a.PID())
}

// AgentStatus is what the scenarios read of an agent's /status: who it is
// and its last cycle's decision and reason (see the README's reasons).
type AgentStatus struct {
	Agent    string `json:"agent"`
	MemberID string `json:"member_id"`
	// Last is the last finished cycle; nil before the first.
	Last *struct {
		Start    time.Time `json:"start"`
		End      time.Time `json:"end"`
		Leader   bool      `json:"is_leader"`
		Decision string    `json:"decision"`
		Reason   string    `json:"reason"`
		Error    string    `json:"error"`
	} `json:"last_cycle"`
}

// StatusReport returns the agent's /status, decoded.
func (a *Agent) StatusReport(ctx context.Context) (AgentStatus, error) {
	var st AgentStatus
	body, err := a.Status(ctx)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return st, fmt.Errorf("agent of %s: /status: %w: %s", a.Member.Name, err, body)
	}
	return st, nil
}

// StaleKeys returns the keys under the lock prefix bound to a lease that no
// running agent of the cluster holds now: the queue keys, announcements and
// NOSPACE queue keys of agents that are gone (or of an earlier session of a
// running agent). An agent's live leases are those of the announcements
// that carry its identity (Agent.Identity). Call it when the harness holds
// no lock of its own. ctx bounds the read.
func (c *Cluster) StaleKeys(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := c.Client().Get(ctx, c.LockPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.LockPrefix, err)
	}
	running := map[string]bool{}
	for _, a := range c.Agents() {
		if a.Running() {
			running[a.Identity()] = true
		}
	}
	agents := c.LockPrefix + "agents/"
	live := map[int64]bool{}
	for _, kv := range resp.Kvs {
		if !strings.HasPrefix(string(kv.Key), agents) || kv.Lease == 0 {
			continue
		}
		var v struct {
			Agent string `json:"agent"`
		}
		if json.Unmarshal(kv.Value, &v) == nil && running[v.Agent] {
			live[kv.Lease] = true
		}
	}
	var stale []string
	for _, kv := range resp.Kvs {
		if kv.Lease != 0 && !live[kv.Lease] {
			stale = append(stale, fmt.Sprintf("%s (lease %x)", kv.Key, kv.Lease))
		}
	}
	return stale, nil
}

// WaitNoStaleKeys waits until StaleKeys finds none. ctx bounds the wait.
func (c *Cluster) WaitNoStaleKeys(ctx context.Context) error {
	var last []string
	var lastErr error
	for {
		last, lastErr = c.StaleKeys(ctx)
		if lastErr == nil && len(last) == 0 {
			return nil
		}
		if err := pause(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("wait for the keys of agents that are gone to go: %w (still there: %v; last read: %w)", err, last, lastErr)
		}
	}
}

// LeaderAmong waits until every member of ms answers Status and all name
// the same leader, which is one of ms, and returns it: the leader elected
// by the members that still run while another one is stopped (Leader would
// wait for the stopped one's answer). ctx bounds the wait.
func (c *Cluster) LeaderAmong(ctx context.Context, ms []*Member) (*Member, error) {
	var last error
	for {
		var lead uint64
		last = nil
		for _, m := range ms {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := m.Status(sctx)
			cancel()
			if err != nil {
				last = err
				break
			}
			if st.Leader == 0 || (lead != 0 && st.Leader != lead) {
				last = fmt.Errorf("members disagree on the leader (%x, %x)", lead, st.Leader)
				break
			}
			lead = st.Leader
		}
		if last == nil {
			if m := c.MemberByID(lead); m != nil && slices.Contains(ms, m) {
				return m, nil
			}
			last = fmt.Errorf("leader %x is not one of %d members", lead, len(ms))
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return nil, fmt.Errorf("wait for a leader among %d members: %w (last: %w)", len(ms), err, last)
		}
	}
}
