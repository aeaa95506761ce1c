//go:build e2e && linux

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// smallDisk is the size of the filesystem that holds one member's data
// directory in TestDiskGuard, and roomyDisk the size it grows to: the fill
// leaves a file of about 80 MiB with 40 MiB in use, so the 48 MiB that a
// copy needs (in use × 1.2) do not fit in the first and do in the second.
const (
	smallDisk = 120 << 20
	roomyDisk = 320 << 20
)

// TestDiskGuard: one follower's data directory is on a small real
// filesystem (a size-limited tmpfs; its write-ahead log elsewhere); every
// agent runs with --data-dir pointing at its member's data directory. That
// member is refused with disk_space — its agent says so, its /status shows
// the free space — while the others are defragmented, the leader last and
// one at a time; once the filesystem has room (the tmpfs grows, as a volume
// does when it is resized), the member is defragmented too. Judged from
// etcd's log lines and gauges (the observer), the free space from statfs.
func TestDiskGuard(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("TestDiskGuard mounts a tmpfs: it needs root (CI runs as root)")
	}
	forFaultLines(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line, SmallDisks: map[int]int64{0: smallDisk}})
		obs := c.Observer()
		small := c.Members()[0]
		ctx := within(t, 4*time.Minute)
		lead, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if lead == small {
			// The small disk must be a follower's: move leadership away.
			if err := c.MoveLeader(ctx, c.Members()[1]); err != nil {
				t.Fatal(err)
			}
		}
		fragment(t, c, etcddata.FillOptions{Keys: 60, ValueSize: 1 << 20, Garbage: 1.0 / 3}, 6<<20)
		before := obs.Data(t)
		st, err := small.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		free := diskFree(t, small.Dir)
		if need := st.DbSizeInUse * 12 / 10; free >= need {
			t.Fatalf("%s: %d bytes free on its filesystem, a copy needs %d: the disk is not small enough to test anything", small.Name, free, need)
		}
		t.Logf("%s: %d MiB in use, %d MiB free on its filesystem", small.Name, st.DbSizeInUse>>20, free>>20)
		n := len(obs.Defrags())

		agents := map[*Member]*Agent{}
		for _, m := range c.Members() {
			agents[m] = c.StartAgent(t, m, AgentOptions{Args: []string{
				"--schedule=@every 1s", "--cooldown=1h", "--defrag-rule=dbSizeFree > 4*1024*1024", "--data-dir=" + m.Dir,
			}})
		}
		ds, err := obs.WaitDefrags(ctx, n+2)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds[n:] {
			if d.Member == small.Name {
				t.Fatalf("%s was defragmented (%v) without room for the copy", small.Name, d)
			}
		}
		if _, err := obs.WaitAnnouncement(ctx, "the agent of "+small.Name+" refusing with disk_space", func(a Announcement) bool {
			return a.Member == small.ID && a.Reason == "disk_space"
		}); err != nil {
			t.Fatal(err)
		}
		checkStatusDiskFree(ctx, t, agents[small])
		CheckEachOnce(t, ds[n:], others(c.Members(), small))
		obs.CheckLeaderLast(t, ds[n:])

		// Room made: the member goes.
		if err := small.ResizeDisk(roomyDisk); err != nil {
			t.Fatal(err)
		}
		ds, err = obs.WaitDefrags(ctx, n+3)
		if err != nil {
			t.Fatal(err)
		}
		if last := ds[len(ds)-1]; last.Member != small.Name {
			t.Errorf("the defrag after the resize is %v, want %s's", last, small.Name)
		}
		if err := obs.WaitAgentsIdle(ctx, c.Members()); err != nil {
			t.Fatal(err)
		}
		CheckEachOnce(t, obs.DefragsSince(n), c.Members())
		obs.CheckData(t, before)
	})
}

// diskFree is what the agent measures: the blocks of the filesystem that an
// unprivileged process may use.
func diskFree(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// checkStatusDiskFree checks that the agent's /status shows the free space
// of its data directory's filesystem.
func checkStatusDiskFree(ctx context.Context, t testing.TB, a *Agent) {
	t.Helper()
	body, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		Last struct {
			Reason        string `json:"reason"`
			DiskFreeBytes *int64 `json:"disk_free_bytes"`
		} `json:"last_cycle"`
	}
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatalf("/status of the agent of %s: %v", a.Member.Name, err)
	}
	if page.Last.DiskFreeBytes == nil || *page.Last.DiskFreeBytes <= 0 {
		t.Errorf("/status of the agent of %s shows no free disk: %s", a.Member.Name, body)
	}
}
