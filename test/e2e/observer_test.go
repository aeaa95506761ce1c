//go:build linux

package e2e

// Tests of the harness's own logic that need no etcd: they run in
// `go test ./...` (no build tag), so the judgement code is covered by make
// test; the scenarios need the tag e2e.

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseTS(t *testing.T) {
	tests := []struct {
		name, in string
		want     time.Time
	}{
		{"3.4 milliseconds", "2026-11-20T22:51:45.525Z", time.Date(2026, 11, 20, 22, 51, 45, 525e6, time.UTC)},
		{"3.5+ microseconds", "2026-11-20T22:58:34.774009Z", time.Date(2026, 11, 20, 22, 58, 34, 774009e3, time.UTC)},
		{"offset", "2026-11-20T23:58:34.774009+0100", time.Date(2026, 11, 20, 22, 58, 34, 774009e3, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTS(tt.in)
			if err != nil || !got.Equal(tt.want) {
				t.Errorf("parseTS(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestGauge(t *testing.T) {
	page := []byte("# HELP etcd_disk_defrag_inflight Whether...\n# TYPE etcd_disk_defrag_inflight gauge\n" +
		"etcd_disk_defrag_inflight 1\netcd_server_is_leader 0\netcd_server_is_leader_total 1\n")
	tests := []struct {
		name      string
		one, seen bool
	}{
		{"etcd_disk_defrag_inflight", true, true},
		{"etcd_server_is_leader", false, true},
		{"etcd_server_has_leader", false, false},
	}
	for _, tt := range tests {
		one, seen := gauge(page, tt.name)
		if one != tt.one || seen != tt.seen {
			t.Errorf("gauge(page, %q) = %v, %v, want %v, %v", tt.name, one, seen, tt.one, tt.seen)
		}
	}
}

// at returns a time ms milliseconds after a fixed origin.
func at(ms int) time.Time {
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(ms) * time.Millisecond)
}

// samples builds a run of 20 ms samples from ms on, each taking 5 ms, with
// the given inflight values.
func samples(from int, inflight ...bool) []Sample {
	var out []Sample
	for i, v := range inflight {
		s := at(from + 20*i)
		out = append(out, Sample{Start: s, End: s.Add(5 * time.Millisecond), OK: true, Inflight: v})
	}
	return out
}

func TestGaugeOverlaps(t *testing.T) {
	const y, n = true, false
	tests := []struct {
		name string
		a, b []Sample
		want int
	}{
		{"one after the other", samples(0, y, y, y, n, n, n), samples(0, n, n, n, n, y, y), 0},
		{"both certainly inflight", samples(0, y, y, y, y, n), samples(0, n, y, y, y, n), 1},
		{"one sample inside the other's run", samples(0, y, y, y, y), samples(0, n, n, y, n), 1},
		{"single samples prove nothing", samples(0, n, y, n), samples(0, n, y, n), 0},
		{"a failed scrape breaks a run", append(samples(0, y), append([]Sample{{Start: at(20), End: at(25)}}, samples(40, y)...)...), samples(0, n, y, n), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := gaugeOverlaps(map[string][]Sample{"m0": tt.a, "m1": tt.b})
			if len(got) != tt.want {
				t.Errorf("gaugeOverlaps() = %q, want %d violations", got, tt.want)
			}
		})
	}
}

func TestLogOverlaps(t *testing.T) {
	tests := []struct {
		name string
		ds   []Defrag
		want int
	}{
		{"touching", []Defrag{{Member: "m0", Start: at(0), End: at(10)}, {Member: "m1", Start: at(10), End: at(20)}}, 0},
		{"overlapping", []Defrag{{Member: "m0", Start: at(0), End: at(11)}, {Member: "m1", Start: at(10), End: at(20)}}, 1},
		{"running is open-ended", []Defrag{{Member: "m0", Start: at(0)}, {Member: "m1", Start: at(100), End: at(120)}}, 1},
		{"same member", []Defrag{{Member: "m0", Start: at(0), End: at(11), Err: "no end logged"}, {Member: "m0", Start: at(10), End: at(20)}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := logOverlaps(tt.ds); len(got) != tt.want {
				t.Errorf("logOverlaps(%v) = %v, want %d pairs", tt.ds, got, tt.want)
			}
		})
	}
}

// fakeObserver returns an observer over fixed data, with m0 leading
// throughout and m1, m2 following.
func fakeObserver(ds []Defrag, anns []Announcement) *Observer {
	c := &Cluster{LockPrefix: DefaultLockPrefix}
	o := newObserver(c)
	o.defrags, o.anns = ds, anns
	for i, name := range []string{"m0", "m1", "m2"} {
		var ss []Sample
		for ms := -1000; ms < 10_000; ms += 20 {
			ss = append(ss, Sample{Start: at(ms), End: at(ms + 1), OK: true, Leader: i == 0})
		}
		o.samples[name] = ss
	}
	return o
}

// captureTB records errors instead of failing the test.
type captureTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (c *captureTB) Errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

func (c *captureTB) Error(args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprint(args...))
}

func (c *captureTB) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

func TestCheckLeaderLast(t *testing.T) {
	d := func(member string, from, to int) Defrag {
		return Defrag{Member: member, Start: at(from), End: at(to)}
	}
	tests := []struct {
		name   string
		ds     []Defrag
		errs   int
		judged bool
	}{
		{"leader last", []Defrag{d("m1", 0, 10), d("m2", 20, 30), d("m0", 40, 50)}, 0, true},
		{"leader first", []Defrag{d("m0", 0, 10), d("m1", 20, 30), d("m2", 40, 50)}, 2, true},
		{"two rounds, leader last in each", []Defrag{d("m1", 0, 10), d("m2", 20, 30), d("m0", 40, 50), d("m1", 60, 70), d("m2", 80, 90), d("m0", 100, 110)}, 0, true},
		{"second round leader first", []Defrag{d("m1", 0, 10), d("m0", 40, 50), d("m0", 60, 70), d("m1", 80, 90)}, 1, true},
		{"no leader", []Defrag{d("m1", 0, 10), d("m2", 20, 30)}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := &captureTB{TB: t}
			judged := fakeObserver(nil, nil).CheckLeaderLast(ct, tt.ds)
			if got := ct.errors(); len(got) != tt.errs || judged != tt.judged {
				t.Errorf("CheckLeaderLast(%v) = %v with errors %q, want %v with %d errors", tt.ds, judged, got, tt.judged, tt.errs)
			}
		})
	}
}

func TestLeaderFirst(t *testing.T) {
	const m0, m1 = 0xa0, 0xa1
	ann := func(member uint64, lease int64, rev int64, state string, ms int) Announcement {
		return Announcement{Member: member, Lease: lease, Revision: rev, State: state, Time: at(ms)}
	}
	gone := func(member uint64, lease int64, rev int64) Announcement {
		return Announcement{Member: member, Lease: lease, Revision: rev, Deleted: true}
	}
	leaderDefrag := []Defrag{{Member: "m0", MemberID: m0, Start: at(100), End: at(200)}}
	tests := []struct {
		name string
		anns []Announcement
		want int
	}{
		{"follower idle before the leader locked", []Announcement{
			ann(m1, 2, 10, "pending", 0), ann(m1, 2, 12, "idle", 10),
			ann(m0, 1, 13, "locked", 50), ann(m0, 1, 14, "defragmenting", 60),
		}, 0},
		{"follower pending when the leader locked", []Announcement{
			ann(m1, 2, 10, "pending", 0),
			ann(m0, 1, 13, "locked", 50), ann(m0, 1, 14, "defragmenting", 60),
		}, 1},
		{"follower asked after the leader locked", []Announcement{
			ann(m0, 1, 13, "locked", 50), ann(m1, 2, 14, "pending", 55), ann(m0, 1, 15, "defragmenting", 60),
		}, 0},
		{"dead follower agent's lease expired before", []Announcement{
			ann(m1, 2, 10, "defragmenting", 0), gone(m1, 2, 11),
			ann(m0, 1, 13, "locked", 50), ann(m0, 1, 14, "defragmenting", 60),
		}, 0},
		{"not the leader agent's own turn", []Announcement{
			ann(m1, 2, 10, "recovering", 0), ann(m0, 1, 13, "locked", 50), ann(m0, 1, 14, "idle", 60),
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fakeObserver(leaderDefrag, tt.anns).LeaderFirst(); len(got) != tt.want {
				t.Errorf("LeaderFirst() = %q, want %d violations", got, tt.want)
			}
		})
	}
}

func TestOrphans(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	owner := fmt.Sprintf("orphan-test-%d/", time.Now().UnixNano())
	p := &process{name: "sleep", path: sleep, args: []string{"60"}, outPath: t.TempDir() + "/out", owner: owner + "x"}
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.kill() })
	// Right after Start, /proc/<pid>/environ can still be empty: the kernel
	// lets the parent go on before it has set up the new program's
	// environment.
	var pids []int
	deadline := time.Now().Add(5 * time.Second)
	for len(pids) == 0 && time.Now().Before(deadline) && err == nil {
		pids, err = orphans(owner)
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || len(pids) != 1 || pids[0] != p.pid() {
		t.Fatalf("orphans(%q) = %v, %v, want [%d]", owner, pids, err, p.pid())
	}
	if err := p.kill(); err != nil {
		t.Fatal(err)
	}
	if pids, err := orphans(owner); err != nil || len(pids) != 0 {
		t.Fatalf("orphans(%q) after kill = %v, %v, want none", owner, pids, err)
	}
	if st := p.exitState(); st == nil || !strings.Contains(st.String(), "killed") {
		t.Errorf("exit state = %v, want killed", st)
	}
}

// TestLogLineSizes: the sizes of a defrag as etcd 3.6 logs them, the file's
// size in its start entry and in its end entry, give what it reclaimed.
func TestLogLineSizes(t *testing.T) {
	o := newObserver(&Cluster{LockPrefix: DefaultLockPrefix})
	m := &Member{Name: "m0", ID: 1}
	o.logLine(m, `{"level":"info","ts":"2026-12-06T02:40:00.000000Z","caller":"backend/backend.go:522","msg":"defragmenting","path":"/d/member/snap/db","current-db-size-bytes":67108864,"current-db-size":"67 MB","current-db-size-in-use-bytes":20971520,"current-db-size-in-use":"21 MB"}`)
	o.logLine(m, `{"level":"info","ts":"2026-12-06T02:40:01.500000Z","caller":"backend/backend.go:593","msg":"finished defragmenting directory","path":"/d/member/snap/db","current-db-size-bytes-diff":-46137344,"current-db-size-bytes":20971520,"current-db-size":"21 MB","current-db-size-in-use-bytes-diff":0,"current-db-size-in-use-bytes":20971520,"current-db-size-in-use":"21 MB","took":"1.5s"}`)
	ds := o.Defrags()
	if len(ds) != 1 {
		t.Fatalf("defrags = %v, want one", ds)
	}
	d := ds[0]
	if d.SizeBefore != 67108864 || d.SizeAfter != 20971520 || d.Reclaimed() != 46137344 {
		t.Errorf("sizes before %d, after %d, reclaimed %d; want 67108864, 20971520, 46137344", d.SizeBefore, d.SizeAfter, d.Reclaimed())
	}
	if d.Duration() != 1500*time.Millisecond {
		t.Errorf("duration = %v, want 1.5s", d.Duration())
	}
}
