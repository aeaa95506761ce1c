//go:build e2e && linux

package e2e

import (
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// f5Quota is the members' --quota-backend-bytes in TestF5NoSpace.
const f5Quota = 16 << 20

// f5Schedule is the agents' schedule in TestF5NoSpace: the time from the
// alarm until the cluster is writable includes up to one interval before an
// agent's next cycle sees the alarm.
const f5Schedule = "@every 1s"

// TestF5NoSpace: history (overwrites, no compaction) fills a 16 MiB quota
// until etcd raises NOSPACE and the cluster serves only reads and deletes.
// The agents, running as daemons with the default rule, make it writable
// again with no human step and never two defrags at once (I1, observer);
// the members they defragment go followers first, the leader last; no user
// data changes. On etcd < 3.6, whose Status has no quota, the agents get
// --etcd-storage-quota-bytes (the harness adds it). The time from the alarm
// to the first successful write is recorded.
func TestF5NoSpace(t *testing.T) {
	forEachLine(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line, QuotaBackendBytes: f5Quota})
		obs := c.Observer()
		cli := c.Client()
		agents := c.StartAgents(t, AgentOptions{Args: []string{"--schedule=" + f5Schedule}})
		ctx := within(t, 2*time.Minute)
		for _, a := range agents {
			if err := a.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.WaitNoSpaceQueue(ctx, len(agents)); err != nil {
			t.Fatal(err)
		}
		n := len(obs.Defrags())

		writes, err := c.FillUntilNoSpace(ctx, "/e2e/nospace/", 4, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		raised := time.Now()
		t.Logf("NOSPACE after %d writes of 64 KiB", writes)
		// Writable again: a put succeeds. The probe writes only under the
		// harness's prefix, which the data check leaves out, and runs while
		// the data is read: the user data is frozen from the alarm on.
		writable := make(chan error, 1)
		var writableAt time.Time
		go func() {
			err := WaitWritable(ctx, cli)
			writableAt = time.Now()
			writable <- err
		}()
		before := obs.Data(t)
		if err := <-writable; err != nil {
			t.Fatal(err)
		}
		Record(t, c, "nospace_recovery_seconds", writableAt.Sub(raised).Seconds(), "s")

		alarms, err := cli.AlarmList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range alarms.Alarms {
			if a.Alarm == pb.AlarmType_NOSPACE {
				t.Errorf("NOSPACE still raised by member %x after a put succeeded", a.MemberID)
			}
		}
		ds := obs.DefragsSince(n)
		if len(ds) == 0 {
			t.Fatal("no member was defragmented")
		}
		// Below 90 % of the quota when the alarm was disarmed, by etcd's
		// account: the size its log gives at the end of each member's last
		// defrag of the recovery. (Its file grows again at once: every
		// write after a defrag takes new pages, the file has no free ones.)
		for _, m := range c.Members() {
			var last *Defrag
			for i := range ds {
				if ds[i].Member == m.Name {
					last = &ds[i]
				}
			}
			switch {
			case last == nil:
				st, err := m.Status(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if float64(st.DbSize) >= 0.9*f5Quota {
					t.Errorf("member %s was not defragmented, and its dbSize %d is above 90%% of the quota %d", m.Name, st.DbSize, f5Quota)
				}
			case last.SizeAfter == 0:
				t.Errorf("etcd logged no size at the end of %v", *last)
			case float64(last.SizeAfter) >= 0.9*f5Quota:
				t.Errorf("member %s: %d bytes after its last defrag %v, not below 90%% of the quota %d", m.Name, last.SizeAfter, *last, f5Quota)
			}
		}
		// The recovery itself, by etcd's account: from the first defrag
		// line to writable (the rest is the wait for an agent's next cycle).
		Record(t, c, "nospace_recovery_from_first_defrag_seconds", writableAt.Sub(ds[0].Start).Seconds(), "s")
		if !obs.CheckLeaderLast(t, ds) {
			t.Logf("leader-last not judged: no recovery defrag of a member that led at its start (%v)", ds)
		}
		obs.CheckData(t, before)
		if _, err := cli.Put(ctx, "/e2e/nospace/after", "ok"); errors.Is(err, rpctypes.ErrNoSpace) || err != nil {
			t.Errorf("put after the recovery: %v", err)
		}
	})
}
