//go:build e2e && linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// f4Refusals is how many blocked cycles every agent must have ended during
// the partition before it heals: more than one, so that an agent that
// refuses once and then goes ahead is caught.
const f4Refusals = 2

// f4PartitionWait bounds the partition: every agent refuses twice within
// about 40 s on two cores (the leader's agent waits one --lock-ttl for the
// cut-off follower in each cycle).
const f4PartitionWait = 2 * time.Minute

// TestF4Partition: one member of three is cut off from the other two by
// nftables between network namespaces (each member and its agent in a
// namespace of its own), while every agent wants a defrag. Either side
// could defragment a member it reaches — Status and Defragment answer on a
// partitioned member — but the cluster would lose its quorum: the two
// connected members are all it has left. So nobody may defragment while
// the partition lasts: judged from etcd, no member logs a defrag (and no
// inflight gauge shows one) from the partition until it heals, although
// every agent ends at least two cycles meanwhile (the connected agents
// announce their refusal in etcd — once: an agent does not rewrite an
// unchanged announcement — and their cycle counters grow; the cut-off
// agent's session ends in etcd and its cycle counter grows). After healing the round completes, one at a time
// (the observer), each member once, no leader turn while a follower's agent is pending (I3, from the announcements), no data changed.
//
// The agents are queued first (the harness holds their lock, so each has
// asked for a turn when the partition begins), as in a round that is cut in
// two. Subtests cut off a follower and the leader (the majority elects a
// new one; the old leader's agent believed its member led).
func TestF4Partition(t *testing.T) {
	if err := NetnsSupported(); err != nil {
		if errors.Is(err, ErrNetnsPrivilege) {
			t.Skipf("F4 cannot run here: %v. It partitions members with network namespaces and nftables, which need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); CI runs it as root", err)
		}
		t.Fatalf("F4 needs network namespaces and nftables: %v", err)
	}
	forFaultLines(t, func(t *testing.T, line string) {
		for _, cut := range []string{"follower", "leader"} {
			t.Run(cut, func(t *testing.T) { f4(t, line, cut == "leader") })
		}
	})
}

func f4(t *testing.T, line string, cutLeader bool) {
	c := NewCluster(t, ClusterOptions{Line: line, Netns: true})
	obs := c.Observer()
	ctx := within(t, 4*time.Minute)
	if _, err := c.Fill(ctx, etcddata.FillOptions{Keys: 2000, ValueSize: 1 << 10, NoCompact: true}); err != nil {
		t.Fatal(err)
	}
	before := obs.Data(t)
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cut := lead
	if !cutLeader {
		cut = others(c.Members(), lead)[0]
	}
	rest := others(c.Members(), cut)

	// Every agent asks for a turn and waits: the followers' for the lock,
	// the leader's for the followers.
	hold, err := c.HoldLock(ctx, t, cut)
	if err != nil {
		t.Fatal(err)
	}
	// --command-timeout=2s (default 5s): a request to a member across the
	// partition fails sooner, so every agent refuses twice within seconds
	// and the partition stays short. TCP connections across it back off
	// their retransmissions meanwhile; a longer partition makes etcd take
	// longer to reconnect after it heals.
	agents := c.StartAgents(t, AgentOptions{Args: []string{"--schedule=@every 1s", "--cooldown=1h", "--defrag-rule=true", "--command-timeout=2s"}})
	pending, err := obs.WaitPending(ctx, c.Members())
	if err != nil {
		t.Fatal(err)
	}
	cutAgent := agentOf(t, agents, cut)
	cyclesBefore := map[*Member]float64{}
	for _, m := range c.Members() {
		if cyclesBefore[m], err = agentCycles(ctx, agentOf(t, agents, m)); err != nil {
			t.Fatal(err)
		}
	}

	// The connected side's own account of the agents, through a client
	// of the connected members only: the observer's watch may sit on the
	// cut-off member, which applies nothing until the partition heals.
	side := newAnnouncementWatch(ctx, t, c, rest)
	n := len(obs.Defrags())
	if err := c.Partition(cut); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	cutRev := side.revision(ctx, t)
	t.Logf("partitioned %s (leader before: %s) at revision %d:\n%s", cut.Name, lead.Name, cutRev, c.NetworkRules())
	if err := hold.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// Wait until every agent has refused at least f4Refusals times: the
	// connected agents announce a refusal in etcd and their cycle counters
	// grow; the cut-off agent cannot announce, so its session ends in etcd
	// and its cycle counter grows. Bounded: an agent whose cycle does not
	// end while the partition lasts breaks I6.
	cutLease := pending[cut.Name].Lease
	cycles := map[*Member]float64{}
	var missing string
	pctx, cancel := context.WithTimeout(ctx, f4PartitionWait)
	defer cancel()
	err = obs.Wait(pctx, "every agent's refusals during the partition", func() bool {
		if len(obs.DefragsSince(n)) > 0 {
			return true // judged below
		}
		var miss []string
		for _, m := range rest {
			if len(side.blocked(m, cutRev)) == 0 {
				miss = append(miss, fmt.Sprintf("the agent of %s (connected) announced no refusal", m.Name))
			}
		}
		if !side.ended(cutLease) {
			miss = append(miss, fmt.Sprintf("the session of the agent of %s (cut off) has not ended in etcd", cut.Name))
		}
		for _, m := range c.Members() {
			total, err := agentCycles(ctx, agentOf(t, agents, m))
			if err != nil {
				miss = append(miss, err.Error())
				continue
			}
			if cycles[m] = total - cyclesBefore[m]; cycles[m] < f4Refusals {
				miss = append(miss, fmt.Sprintf("the agent of %s ended %v cycles", m.Name, cycles[m]))
			}
		}
		missing = strings.Join(miss, "; ")
		return len(miss) == 0
	})
	healAt := time.Now()
	if herr := c.Heal(); herr != nil {
		t.Fatal(herr)
	}
	Record(t, c, "f4_partition_seconds", healAt.Sub(cutAt).Seconds(), "s")
	for _, m := range rest {
		var reasons []string
		for _, a := range side.blocked(m, cutRev) {
			reasons = append(reasons, a.Reason)
		}
		t.Logf("agent of %s (connected) ended %v cycles during the partition, announcing the refusals %v", m.Name, cycles[m], reasons)
	}
	t.Logf("agent of %s (cut off) ended %v cycles during the partition; its session ended in etcd: %v; its /status now: %s",
		cut.Name, cycles[cut], side.ended(cutLease), agentReason(ctx, cutAgent))
	if err != nil {
		t.Fatalf("%v: %s after %v of partition. Every agent tries again every second and every request it makes is bounded (--command-timeout=2s, --lock-ttl=5s): "+
			"a cycle that does not end while the partition lasts is an unbounded wait (I6); see the agent's log", err, missing, healAt.Sub(cutAt).Round(time.Second))
	}
	// I2, from etcd's account: no defrag began while the partition lasted.
	if ds := obs.DefragsSince(n); len(ds) > 0 {
		t.Fatalf("I2 violated: defrags during the partition of %s (%s..%s): %v", cut.Name, clock(cutAt), clock(healAt), ds)
	}
	for _, m := range c.Members() {
		for _, s := range obs.Samples(m.Name) {
			if s.OK && s.Inflight && s.End.After(cutAt) && s.Start.Before(healAt) {
				t.Errorf("I2 violated: %s showed etcd_disk_defrag_inflight 1 at %s..%s, during the partition", m.Name, clock(s.Start), clock(s.End))
			}
		}
	}

	// Healed: the round completes.
	ds, err := obs.WaitDefrags(ctx, n+len(c.Members()))
	if err != nil {
		t.Fatal(err)
	}
	ds = ds[n:]
	Record(t, c, "f4_round_after_heal_seconds", lastDefrag(ds).End.Sub(healAt).Seconds(), "s")
	for _, d := range ds {
		if d.Start.Before(healAt) {
			t.Errorf("I2 violated: %v began before the partition healed at %s", d, clock(healAt))
		}
	}
	if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	CheckEachOnce(t, obs.DefragsSince(n), c.Members())
	// Leader last (I3) is judged at cleanup from the announcements: the
	// leader's agent must not take its turn while a follower's agent is
	// pending or in a turn. The round's order is not judged here: during
	// the partition every follower's agent was refused (unhealthy_member),
	// and the leader's agent waits one lock TTL for a refused follower, not
	// until the heal; when the heal comes later, the leader's turn may come
	// before a follower that was refused and asks again afterwards.
	if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
		t.Error(err)
	}
	obs.CheckData(t, before)
}

// agentCycles returns the agent's etcd_defrag_agent_cycles_total (the
// agent's own account: F4 uses it only to know that the agent tried).
func agentCycles(ctx context.Context, a *Agent) (float64, error) {
	ms, err := a.Metrics(ctx)
	if err != nil {
		return 0, fmt.Errorf("metrics of the agent of %s: %w", a.Member.Name, err)
	}
	return ms["etcd_defrag_agent_cycles_total"], nil
}

// agentReason returns the decision, reason and error of the agent's last
// cycle from its /status (the agent's own account), for the log.
func agentReason(ctx context.Context, a *Agent) string {
	st, err := a.StatusReport(ctx)
	switch {
	case err != nil:
		return err.Error()
	case st.Last == nil:
		return "no cycle finished"
	}
	return fmt.Sprintf("%s, reason %s, error %q", st.Last.Decision, st.Last.Reason, st.Last.Error)
}

// announcementWatch records the agents' announcements through a client of
// some members only.
type announcementWatch struct {
	c   *Cluster
	cli *clientv3.Client

	mu   sync.Mutex
	anns []Announcement
}

// newAnnouncementWatch watches the agents' announcements through the
// members ms, from now until t's cleanup.
func newAnnouncementWatch(ctx context.Context, t testing.TB, c *Cluster, ms []*Member) *announcementWatch {
	t.Helper()
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.ClientURL)
	}
	cli, err := clientv3.New(c.clientConfig(eps...))
	if err != nil {
		t.Fatal(err)
	}
	w := &announcementWatch{c: c, cli: cli}
	rev := w.revision(ctx, t)
	wctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	prefix := c.LockPrefix + "agents/"
	wg.Go(func() {
		for wr := range cli.Watch(clientv3.WithRequireLeader(wctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			for _, ev := range wr.Events {
				if a, ok := decodeAnnouncement(prefix, ev); ok {
					a.Seen = time.Now()
					w.mu.Lock()
					w.anns = append(w.anns, a)
					w.mu.Unlock()
				}
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = cli.Close()
	})
	return w
}

// revision returns the store's revision through the watch's members.
func (w *announcementWatch) revision(ctx context.Context, t testing.TB) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := w.cli.Get(ctx, HarnessPrefix+"revision", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// all returns every announcement seen.
func (w *announcementWatch) all() []Announcement {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.anns)
}

// blocked returns m's agents' announcements after revision rev that end a
// cycle without a defrag that was needed (idle, with a blocking reason).
func (w *announcementWatch) blocked(m *Member, rev int64) []Announcement {
	var out []Announcement
	for _, a := range w.all() {
		if a.Member == m.ID && a.Revision > rev && !a.Deleted && a.State == "idle" && blocked(a.Reason) {
			out = append(out, a)
		}
	}
	return out
}

// ended reports whether the announcement of the session with the lease was
// deleted (its lease expired or was revoked).
func (w *announcementWatch) ended(lease int64) bool {
	return slices.ContainsFunc(w.all(), func(a Announcement) bool { return a.Lease == lease && a.Deleted })
}
