//go:build e2e && linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// Long defrags: each member's defrag is held (HoldSnapshot, as in F6) for
// longHold — several times the agents' --command-timeout and longer than
// their --lock-ttl — the way a multi-GiB member takes minutes to copy. Real
// data would need gigabytes and minutes of filling per second of copying on
// this machine; a held read transaction makes etcd itself take that long,
// whatever the disk.
const (
	longHold           = 7 * time.Second
	longCommandTimeout = "--command-timeout=1s"
	longLockTTL        = "--lock-ttl=5s"
	// longRule fires on every member after the fill (20 MiB free) and on
	// none right after its defrag.
	longRule = "dbSizeFree > 4*1024*1024"
)

// TestLongDefrag: defrags that outlast every timeout of the agents. In
// "once", the first follower's agent runs alone with --once; while its
// member defragments (held), the agents of every other member start, also
// with --once. In "daemons", every agent is a daemon on a schedule of its
// own (every 2 s, 3 s, ...), the first again alone until its member's defrag
// runs. Every defrag is held for longHold, on 3 and 5 members. In
// "daemons-move-leader" (3 members) the agents run with --move-leader and a
// client writes all along, as the API server does.
//
// Judged: each member defragmented exactly once, never two at once, the
// leader last (etcd's log intervals and gauges, the observer at cleanup);
// every --once agent exits 0; no agent announces a blocked cycle
// (etcd_unavailable and the like) while every member is up; no data
// change; and from etcd's leases, read through a member that does not
// defragment at the end of every hold: no running agent beside another
// member has lost the session it had — except, without --move-leader,
// during the leader's defrag: etcd renews no lease while its leader
// defragments with entries to apply (the README's "long defrags"), so a
// write then, such as an agent's announcement, ends every session that the
// defrag outlasts. With --move-leader, the leader's member is defragmented
// as a follower and every daemon keeps one session to the end, under
// writes. A --once agent's lease is deleted by etcd only after its agent
// exited (it abandons its session at exit), but the leader's.
//
// "3members/once-real-data" is the reproduction of the issue as a user met
// it, without held snapshots: 350 MiB in use on every member, so that each
// defrag copies that much (3-4 s on this machine quiet, longer busy: several
// times --command-timeout=1s), the late --once agents started while the
// first member's defrag runs.
func TestLongDefrag(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		for _, v := range []longVariant{
			{members: 3}, {members: 3, daemons: true}, {members: 3, daemons: true, moveLeader: true},
			{members: 5}, {members: 5, daemons: true}, {members: 3, realData: true},
		} {
			t.Run(v.String(), func(t *testing.T) { longDefrag(t, line, v) })
		}
	})
}

type longVariant struct {
	members             int
	daemons, moveLeader bool
	realData            bool // no held snapshots: defrags last as long as copying the data does
}

func (v longVariant) String() string {
	switch {
	case v.realData:
		return fmt.Sprintf("%dmembers/once-real-data", v.members)
	case v.moveLeader:
		return fmt.Sprintf("%dmembers/daemons-move-leader", v.members)
	case v.daemons:
		return fmt.Sprintf("%dmembers/daemons", v.members)
	}
	return fmt.Sprintf("%dmembers/once", v.members)
}

func longDefrag(t *testing.T, line string, v longVariant) {
	c := NewCluster(t, ClusterOptions{Line: line, Members: v.members})
	obs := c.Observer()
	if v.realData {
		// 500 MiB written, 30 % deleted: 350 MiB live, 150 MiB free.
		fragment(t, c, etcddata.FillOptions{Keys: 500, ValueSize: 1 << 20, Garbage: 0.3}, 64<<20)
	} else {
		// 60 MiB written, a third deleted: 20 MiB free, 40 MiB live (a held
		// snapshot needs a file of 32 MiB).
		fragment(t, c, etcddata.FillOptions{Keys: 60, ValueSize: 1 << 20, Garbage: 1.0 / 3}, 6<<20)
	}
	before := obs.Data(t)
	ctx := within(t, time.Duration(v.members)*(longHold+20*time.Second)+time.Minute)
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snaps := map[string]*HeldSnapshot{}
	for _, m := range c.Members() {
		if v.realData {
			break
		}
		if snaps[m.Name], err = m.HoldSnapshot(ctx, t); err != nil {
			t.Fatal(err)
		}
	}
	if v.moveLeader {
		load := c.StartLoad(t, LoadOptions{Name: "long", Writers: 1, Rate: 10})
		t.Cleanup(load.Stop)
	}
	n := len(obs.Defrags())

	args := func(i int) []string {
		a := []string{longCommandTimeout, longLockTTL, "--cooldown=1h", "--defrag-rule=" + longRule}
		if v.moveLeader {
			a = append(a, "--move-leader")
		}
		if v.daemons {
			return append(a, fmt.Sprintf("--schedule=@every %ds", 2+i))
		}
		return append(a, "--once")
	}
	// The --once agents' exits, each with the cluster's revision read as
	// soon as the harness saw the process end.
	type exit struct {
		code int
		rev  int64
		err  error
	}
	exits := map[*Agent]chan exit{}
	start := func(m *Member, i int) *Agent {
		a := c.StartAgent(t, m, AgentOptions{Args: args(i)})
		if !v.daemons {
			ch := make(chan exit, 1)
			exits[a] = ch
			go func() {
				code, err := a.Wait(ctx)
				rev, rerr := c.Revision(ctx)
				ch <- exit{code: code, rev: rev, err: errors.Join(err, rerr)}
			}()
		}
		return a
	}
	first := others(c.Members(), lead)[0]
	agents := []*Agent{start(first, 0)}
	d0, err := obs.WaitRunning(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d0.Member != first.Name {
		t.Fatalf("the first defrag %v is not of %s, whose agent alone runs", d0, first.Name)
	}
	// The late agents, while the first member defragments.
	for i, m := range others(c.Members(), first) {
		agents = append(agents, start(m, i+1))
	}

	// Hold every defrag for longHold, one after the other, and check the
	// sessions at the end of each hold.
	sessions := map[*Agent]int64{} // the lease each agent had when first seen
	var ds []Defrag
	if v.realData {
		if err := obs.Wait(ctx, fmt.Sprintf("%d defrags to end", v.members), func() bool {
			done := 0
			for _, x := range obs.DefragsSince(n) {
				if !x.Running() {
					done++
				}
			}
			return done >= v.members
		}); err != nil {
			t.Fatalf("%v (defrags so far: %v)", err, obs.DefragsSince(n))
		}
	}
	for len(ds) < v.members && !v.realData {
		d, err := obs.WaitRunning(ctx)
		if err != nil {
			t.Fatalf("%v (defrags so far: %v)", err, ds)
		}
		holdUntil(ctx, t, obs, d, longHold)
		busy := c.MemberByID(d.MemberID)
		if leader, _ := obs.LeaderAt(d.Member, d.Start); !leader || v.moveLeader {
			checkSessions(ctx, t, c, busy, agents, sessions)
		}
		snaps[d.Member].Release()
		ds = append(ds, d)
		if err := obs.Wait(ctx, fmt.Sprintf("the end of %v", d), func() bool {
			for _, x := range obs.DefragsSince(n) {
				if x.Member == d.Member && x.Start.Equal(d.Start) && !x.Running() {
					return true
				}
			}
			return false
		}); err != nil {
			t.Fatal(err)
		}
	}
	exitRev := map[*Agent]int64{}
	if !v.daemons {
		for _, a := range agents {
			e := <-exits[a]
			if e.err != nil {
				t.Fatal(e.err)
			}
			if e.code != 0 {
				t.Errorf("the --once agent of %s exited %d, want 0; last lines of its log:\n%s", a.Member.Name, e.code, tail(a.LogPath, 8))
			}
			exitRev[a] = e.rev
		}
	} else if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}

	got := obs.DefragsSince(n)
	CheckEachOnce(t, got, c.Members())
	obs.CheckLeaderLast(t, got)
	for _, d := range got {
		Record(t, c, "long_defrag_seconds", d.Duration().Seconds(), "s")
	}

	// No blocked cycle while every member was up.
	for _, a := range obs.Announcements() {
		if !a.Deleted && blocked(a.Reason) {
			t.Errorf("an agent announced a blocked cycle while every member was up: %v", a)
		}
	}
	switch {
	case v.moveLeader:
		last := got[len(got)-1]
		if last.Member != lead.Name {
			t.Errorf("the last defrag %v is not of the leader %s", last, lead.Name)
		} else if leader, known := obs.LeaderAt(last.Member, last.Start); !known || leader {
			t.Errorf("%s still led when its defrag %v began (known %v): --move-leader did not hand leadership away", lead.Name, last, known)
		}
		// Every daemon kept its one session, under writes, to the end.
		checkSessions(ctx, t, c, nil, agents, sessions)
	case !v.daemons:
		for _, a := range agents {
			for _, l := range agentLeases(obs, a) {
				ended, ok := obs.SessionEnded(l)
				if !ok || ended.Revision > exitRev[a] || a.Member == lead {
					continue
				}
				t.Errorf("etcd ended the session %x of the agent of %s at revision %d, while the agent ran (it exited at or after revision %d)",
					l, a.Member.Name, ended.Revision, exitRev[a])
			}
		}
	}
	obs.CheckData(t, before)
}

// checkSessions checks, through a member other than busy (the one that
// defragments; nil: any), that every running agent still has the session
// it had when this check first saw it: the same lease, alive in etcd, with
// its announcement. sessions keeps the lease of each agent across calls.
func checkSessions(ctx context.Context, t testing.TB, c *Cluster, busy *Member, agents []*Agent, sessions map[*Agent]int64) {
	t.Helper()
	var via *Member
	for _, m := range c.Members() {
		if m != busy {
			via = m
			break
		}
	}
	cli, err := via.Client()
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Get(rctx, c.LockPrefix+"agents/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("read the announcements through %s: %v", via.Name, err)
	}
	leases := map[string][]int64{} // agent identity → leases announced now
	for _, kv := range resp.Kvs {
		a, ok := decodeAnnouncement(c.LockPrefix+"agents/", &clientv3.Event{Kv: kv})
		if ok {
			leases[a.Agent] = append(leases[a.Agent], a.Lease)
		}
	}
	for _, a := range agents {
		if !a.Running() {
			continue
		}
		now := leases[a.Identity()]
		had, seen := sessions[a]
		switch {
		case !seen && len(now) == 1:
			sessions[a] = now[0]
		case !seen:
			t.Errorf("the agent of %s announces %d sessions, want 1 (%x)", a.Member.Name, len(now), now)
		case !slices.Equal(now, []int64{had}):
			t.Errorf("the agent of %s lost its session %x while %s defragmented: it announces %x now", a.Member.Name, had, nameOf(busy), now)
		case !leaseAlive(ctx, t, cli, had):
			t.Errorf("the session %x of the agent of %s ended while %s defragmented", had, a.Member.Name, nameOf(busy))
		}
	}
}

func nameOf(m *Member) string {
	if m == nil {
		return "no member"
	}
	return m.Name
}

// holdUntil waits until the running defrag d has lasted hold by etcd's own
// log clock, and fails the test if it ended before.
func holdUntil(ctx context.Context, t testing.TB, obs *Observer, d Defrag, hold time.Duration) {
	t.Helper()
	if err := obs.Wait(ctx, fmt.Sprintf("the defrag %v to last %v", d, hold), func() bool {
		return time.Since(d.Start) >= hold
	}); err != nil {
		t.Fatal(err)
	}
	for _, x := range obs.Defrags() {
		if x.Member == d.Member && x.Start.Equal(d.Start) && !x.Running() {
			t.Fatalf("the defrag %v ended before it was released: the held snapshot did not hold it", x)
		}
	}
}

// agentLeases returns the session leases the agent's current process
// announced with, in the order of their first announcement.
func agentLeases(obs *Observer, a *Agent) []int64 {
	var out []int64
	id := a.Identity()
	for _, x := range obs.Announcements() {
		if strings.EqualFold(x.Agent, id) && !slices.Contains(out, x.Lease) {
			out = append(out, x.Lease)
		}
	}
	return out
}

// leaseAlive reports whether etcd, asked through cli, still keeps the lease.
func leaseAlive(ctx context.Context, t testing.TB, cli *clientv3.Client, lease int64) bool {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.TimeToLive(rctx, clientv3.LeaseID(lease))
	if err != nil {
		t.Fatal(err)
	}
	return resp.TTL > 0
}
