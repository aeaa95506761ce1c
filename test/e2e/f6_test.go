//go:build e2e && linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// f6Hold is how long the scenario makes a defrag last, by etcd's own log
// clock: twice the agents' lease TTL (the harness's --lock-ttl=5s).
const f6Hold = 10 * time.Second

// f6Rule fires on a member with more than 4 MiB free: every member after
// the fill (20 MiB deleted; etcd 3.4 counts only 7 to 15 MiB of that free),
// no member right after its defrag, each follower again once the scenario
// deletes another 20 MiB while the leader defragments.
const f6Rule = "dbSizeFree > 4*1024*1024"

// TestF6DefragLongerThanLease: defrags that last twice the lease TTL. A
// defrag is made long the way a backup makes it long in production: a
// snapshot stream that nobody reads keeps a read transaction open on the
// member's bbolt file, and the defrag cannot close the old file until the
// snapshot ends (HoldSnapshot). That does not depend on the machine's disk
// speed, which would need gigabytes of data, and minutes of filling, for a
// few seconds of copying.
//
// The round: every member has 20 MiB free. The first follower's defrag is
// held 2×TTL: a follower's defrag blocks no lease renewal (the agent keeps
// its session alive through the other members), so its agent keeps its
// session and the next follower waits for the lock. Then the leader's
// defrag is held 2×TTL, and meanwhile 20 MiB are deleted and compacted
// through the followers — writes the leader cannot apply while it
// defragments. Lease renewals are answered by the leader only once it has
// applied what is committed, so every session lease of the cluster
// expires, the leader's agent's included; and the followers (cooldown 0)
// have 20 MiB free again: their agents queue for the lock while the
// leader's defrag runs on, and the first of them takes it when etcd ends
// the leader's agent's lease.
//
// Judged, from etcd's account: never two defrags at once (I1, observer;
// the followers' second defrags start after the leader's ended); the first
// follower's agent kept its session through its own long defrag (its
// announcement still there at the end of the hold); the leader's agent's
// session ended (etcd deleted its announcement), and still that agent
// recorded its defrag — last/<leader> says success, carries its identity,
// covers the logged defrag — and the leader (cooldown 1h) is defragmented
// once, its agent announcing "cooldown" afterwards; the in-flight records
// are settled (no defrag/ key left; who removed the leader's, its agent or
// the next lock holder, is recorded); the leader last in the round (I3); no
// data change (I4: the digest after the deletion against the end, HashKV
// equal on every member).
func TestF6DefragLongerThanLease(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line})
		obs := c.Observer()
		ctx := within(t, 3*time.Minute)
		// 60 MiB written, a third deleted: 20 MiB free, 40 MiB live (a held
		// snapshot needs a file of 32 MiB).
		fill := etcddata.FillOptions{Keys: 60, ValueSize: 1 << 20, Garbage: 1.0 / 3}
		fragment(t, c, fill, 6<<20)
		lead, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		followers := others(c.Members(), lead)
		snaps := map[*Member]*HeldSnapshot{}
		for _, m := range c.Members() {
			if snaps[m], err = m.HoldSnapshot(ctx, t); err != nil {
				t.Fatal(err)
			}
		}
		n := len(obs.Defrags())

		var leadAgent *Agent
		for _, m := range c.Members() {
			cooldown := "0" // the followers come back after the deletion
			if m == lead {
				cooldown = "1h" // the leader's record must keep it from a second defrag
			}
			a := c.StartAgent(t, m, AgentOptions{Args: []string{"--schedule=@every 1s", "--defrag-rule=" + f6Rule, "--cooldown=" + cooldown}})
			if m == lead {
				leadAgent = a
			}
		}
		lcli, err := lead.Client()
		if err != nil {
			t.Fatal(err)
		}

		// The first follower's defrag, held; the other follower's snapshot
		// goes at once.
		dFirst, err := obs.WaitRunning(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first := c.MemberByID(dFirst.MemberID)
		if first == lead {
			t.Fatalf("the first defrag %v is the leader's", dFirst)
		}
		for _, m := range followers {
			if m != first {
				snaps[m].Release()
			}
		}
		// Read through the leader: the observer's watch may run through
		// the member that defragments, which sends no event until it
		// applies again.
		annFirst, err := announcedVia(ctx, c, lcli, first, 0, func(a Announcement) bool { return a.State == "defragmenting" })
		if err != nil {
			t.Fatal(err)
		}
		holdDefrag(ctx, t, obs, dFirst)
		if !announced(ctx, t, c, lcli, first, annFirst.Lease) {
			t.Errorf("the session %x of the agent of %s ended during its own defrag %v: a follower's defrag must not cost its agent the lease",
				annFirst.Lease, first.Name, dFirst)
		}
		snaps[first].Release()
		t.Logf("the follower %s's defrag held for %v", first.Name, f6Hold)

		// The leader's defrag, held; meanwhile writes it cannot apply
		// (through a follower): another 20 MiB deleted, compacted on both
		// followers, whose agents ask for a turn again.
		var dLead Defrag
		if err := obs.Wait(ctx, "the leader's defrag", func() bool {
			for _, d := range obs.DefragsSince(n) {
				if d.Member == lead.Name {
					dLead = d
					return true
				}
			}
			return false
		}); err != nil {
			t.Fatal(err)
		}
		fcli, err := followers[0].Client()
		if err != nil {
			t.Fatal(err)
		}
		annLead, err := announcedVia(ctx, c, fcli, lead, 0, func(a Announcement) bool { return a.State == "defragmenting" })
		if err != nil {
			t.Fatal(err)
		}
		key := func(i int) string { return fmt.Sprintf("%s%09d", etcddata.DefaultFillPrefix, i) }
		live := int(float64(fill.Keys) * fill.Garbage) // the first live key
		del, err := fcli.Delete(ctx, key(live), clientv3.WithRange(key(live+20)))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range followers {
			cli, err := m.Client()
			if err != nil {
				t.Fatal(err)
			}
			for range 3 { // bbolt counts freed pages as free after later commits (see Compact)
				if _, err := cli.Compact(ctx, del.Header.Revision, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
					t.Fatalf("compact %s: %v", m.Name, err)
				}
			}
		}
		mid, err := c.readData(ctx, fcli)
		if err != nil {
			t.Fatal(err)
		}
		// Each follower's agent asks again: pending, or already past it
		// (locked) when the leader's agent's lease had ended by then.
		for _, m := range followers {
			if _, err := announcedVia(ctx, c, fcli, m, del.Header.Revision, Announcement.active); err != nil {
				t.Fatal(err)
			}
		}
		holdDefrag(ctx, t, obs, dLead)
		// Whether etcd ended the leader's agent's session before the defrag
		// ended (its announcement is gone) or right after.
		Record(t, c, "f6_leader_session_ended_during_defrag", boolValue(!announced(ctx, t, c, fcli, lead, annLead.Lease)), "bool")
		rel := revisionVia(ctx, t, fcli)
		snaps[lead].Release()
		t.Logf("the leader %s's defrag held for %v; the followers' agents pending again", lead.Name, f6Hold)

		// The leader's agent finished that cycle (it announces "idle" after
		// it recorded, with its session or, if that ended, a new one) and
		// recorded the defrag.
		if _, err := announcedVia(ctx, c, lcli, lead, rel, func(a Announcement) bool {
			return a.State == "idle" && a.Agent == leadAgent.Identity()
		}); err != nil {
			t.Fatal(err)
		}
		dFirst = obs.DefragsSince(n)[0]
		if dLead = obs.DefragsSince(n)[len(followers)]; dLead.Member != lead.Name || dLead.Running() {
			t.Fatalf("the leader's defrag %v is not over, or not the third", dLead)
		}
		checkLastRecord(ctx, t, c, lcli, lead, leadAgent, dLead)

		// The followers' second defrags; the leader stays in cooldown.
		if _, err := obs.WaitDefrags(ctx, n+2*len(followers)+1); err != nil {
			t.Fatal(err)
		}
		if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
			t.Fatal(err)
		}
		// The leader's agent ran cycles after its defrag and said
		// "cooldown" (once: an agent does not rewrite an unchanged
		// announcement); etcd's count below is the judgement.
		if _, err := obs.WaitAnnouncement(ctx, "the leader's agent in cooldown", func(a Announcement) bool {
			return a.Member == lead.ID && a.State == "idle" && a.Reason == "cooldown" && a.Revision > rel
		}); err != nil {
			t.Fatal(err)
		}
		ds := obs.DefragsSince(n)
		count := map[string]int{}
		for _, d := range ds {
			count[d.Member]++
			if d.Member != lead.Name && d.Start.After(dLead.Start) && !d.Start.After(dLead.End) {
				t.Errorf("I1 violated: %v began before the leader's defrag %v ended", d, dLead)
			}
		}
		for _, m := range c.Members() {
			want := 2
			if m == lead {
				want = 1
			}
			if count[m.Name] != want {
				t.Errorf("member %s defragmented %d times, want %d (defrags: %v)", m.Name, count[m.Name], want, ds)
			}
		}
		if !obs.CheckLeaderLast(t, ds) {
			t.Errorf("leader-last not judged: no defrag of a member that led at its start (%v)", ds)
		}
		Record(t, c, "f6_follower_defrag_seconds", dFirst.Duration().Seconds(), "s")
		Record(t, c, "f6_leader_defrag_seconds", dLead.Duration().Seconds(), "s")
		if _, ok := obs.SessionEnded(annLead.Lease); !ok {
			t.Errorf("the session %x of the leader's agent outlived a defrag of %v: the scenario did not test a lease ending", annLead.Lease, dLead.Duration())
		}
		settledBy(ctx, t, c, obs, lead)
		if err := c.WaitNoKeys(ctx, c.LockPrefix+"defrag/"); err != nil {
			t.Error(err)
		}
		obs.CheckData(t, mid)
	})
}

// holdDefrag waits until the running defrag d has lasted f6Hold, by etcd's
// log clock: the held snapshot is what keeps it running, the wait only
// says for how long. ctx bounds it.
func holdDefrag(ctx context.Context, t testing.TB, obs *Observer, d Defrag) {
	t.Helper()
	if err := obs.Wait(ctx, fmt.Sprintf("the defrag %v to last %v", d, f6Hold), func() bool {
		return time.Since(d.Start) >= f6Hold
	}); err != nil {
		t.Fatal(err)
	}
	for _, x := range obs.Defrags() {
		if x.Member == d.Member && x.Start.Equal(d.Start) && !x.Running() {
			t.Fatalf("the defrag %v ended before it was released: the held snapshot did not hold it", x)
		}
	}
}

// checkLastRecord checks the member's last/ record, read through cli: a
// success, written by the agent a, covering the logged defrag d.
func checkLastRecord(ctx context.Context, t testing.TB, c *Cluster, cli *clientv3.Client, m *Member, a *Agent, d Defrag) {
	t.Helper()
	key := fmt.Sprintf("%slast/%x", c.LockPrefix, m.ID)
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	resp, err := cli.Get(rctx, key)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		t.Errorf("no %s after the defrag %v: the agent of %s, whose session ended during it, did not record it (the member loses its cooldown and is defragmented again)", key, d, m.Name)
		return
	}
	var rec struct {
		Start  time.Time `json:"start"`
		End    time.Time `json:"end"`
		Result string    `json:"result"`
		Agent  string    `json:"agent"`
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	// etcd 3.4 logs milliseconds: a millisecond of slack.
	if rec.Result != "success" || rec.Agent != a.Identity() ||
		rec.Start.After(d.Start.Add(time.Millisecond)) || rec.End.Before(d.End.Add(-time.Millisecond)) {
		t.Errorf("%s = %s, want result success, agent %s, start no later than %s and end no earlier than %s (the logged defrag)",
			key, resp.Kvs[0].Value, a.Identity(), clock(d.Start), clock(d.End))
	}
}

// settledBy waits until the member's defrag/ record is removed, and logs
// and records who removed it: the member's own agent, in the transaction
// that wrote its last/ record (the same revision), or the next lock holder.
// It returns the revision of the removal. ctx bounds the wait.
func settledBy(ctx context.Context, t testing.TB, c *Cluster, obs *Observer, m *Member) int64 {
	t.Helper()
	rec := fmt.Sprintf("%sdefrag/%x", c.LockPrefix, m.ID)
	last := fmt.Sprintf("%slast/%x", c.LockPrefix, m.ID)
	var deleted int64
	if err := obs.Wait(ctx, "the removal of "+rec, func() bool {
		for _, e := range obs.KeyEvents(rec) {
			if e.Key == rec && e.Deleted {
				deleted = e.Revision
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	byNext := true
	for _, e := range obs.KeyEvents(last) {
		if e.Key == last && !e.Deleted && e.Revision == deleted {
			byNext = false
		}
	}
	who := "its own agent, with its last/ record"
	if byNext {
		who = "the next lock holder"
	}
	t.Logf("%s was removed at revision %d by %s", rec, deleted, who)
	Record(t, c, "f6_inflight_settled_by_next_holder", boolValue(byNext), "bool")
	return deleted
}

// announcedVia waits until an announcement of an agent of member m written
// after revision rev satisfies cond, reading the announcements through cli
// (the observer's watch may run through a member whose defrag is held).
// ctx bounds the wait.
func announcedVia(ctx context.Context, c *Cluster, cli *clientv3.Client, m *Member, rev int64, cond func(Announcement) bool) (Announcement, error) {
	prefix := fmt.Sprintf("%sagents/%x/", c.LockPrefix, m.ID)
	for {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := cli.Get(rctx, prefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			for _, kv := range resp.Kvs {
				a, ok := decodeAnnouncement(c.LockPrefix+"agents/", &clientv3.Event{Kv: kv})
				if ok && a.Revision > rev && cond(a) {
					return a, nil
				}
			}
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return Announcement{}, fmt.Errorf("wait for an announcement of the agent of %s: %w", m.Name, err)
		}
	}
}

// announced reports whether the announcement of member m's agent with the
// given session lease is still in etcd, read through cli: etcd deletes it
// when it ends the lease.
func announced(ctx context.Context, t testing.TB, c *Cluster, cli *clientv3.Client, m *Member, lease int64) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, fmt.Sprintf("%sagents/%x/%x", c.LockPrefix, m.ID, lease), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count > 0
}

// revisionVia returns the current revision as the member behind cli
// answers it.
func revisionVia(ctx context.Context, t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, HarnessPrefix+"revision", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}
