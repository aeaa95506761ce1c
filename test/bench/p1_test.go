//go:build bench && linux

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/test/e2e"
)

// p1ValueSize is the size of the values P1 writes: a mid-sized Kubernetes
// object.
const p1ValueSize = 8 << 10

// p1Args are the agents' flags in P1 and P2: one cycle, a rule that fires
// on the data written (half of it reclaimable) and is evaluated on the
// members' real sizes like the default rule, and the default lease TTL
// (the harness's 5 s is for fault scenarios). Everything else is default.
var p1Args = []string{"--once", "--defrag-rule=fragmentation > 0.25 && dbSizeFree > 4*1024*1024", "--lock-ttl=30s"}

// TestP1RoundOverhead measures the agents' round against the floor:
// back-to-back Defragment calls on every member, followers then the leader,
// on the same data. For every cluster size and amount of data, the data is
// written once (half of it deleted and compacted), the members' data
// directories are copied, and every run of the floor and of the agents
// starts from that copy, byte for byte; the floor and the agents take turns
// going first. The agents are started at once with --once, as separate
// processes; their round is from the first start to the last exit, start-up
// included. Also the scale series (3, 5, 7 members).
func TestP1RoundOverhead(t *testing.T) {
	track(t)
	for _, pc := range cfg.p1 {
		name := fmt.Sprintf("members=%d/data=%dMiB", pc.members, pc.dataMiB)
		if l := pc.label(); l != "" {
			name += "/" + strings.ReplaceAll(l, " ", "-")
		}
		t.Run(name, func(t *testing.T) {
			rc := runRoundCase(t, pc)
			results.Update(func(r *Results) {
				r.Rounds = slices.DeleteFunc(r.Rounds, func(x RoundCase) bool { // a merged run's case replaces the old one
					return x.Members == rc.Members && x.DataMiB == rc.DataMiB && x.Label == rc.Label
				})
				r.Rounds = append(r.Rounds, rc)
			})
		})
	}
}

// roundCase is one P1 configuration; args are the agent flags of a variant.
type roundCase struct {
	members, dataMiB, reps int
	args                   []string
}

// label names the case's variant: by the name variants gives its flags, or
// by the flags themselves ("" for none). Derived from the flags alone, so a
// case given in BENCH_P1 replaces the row of the same case of a full run.
func (pc roundCase) label() string {
	flags := strings.Join(pc.args, " ")
	if name, ok := variants[flags]; ok {
		return name
	}
	return flags
}

// shortTimeouts is P1's and P2's variant for the large-database issue: the
// shortest --command-timeout (1s) and lease TTL (5s) the agent takes, so that
// each defrag outlasts every timeout without hours of fill (P1: five times
// the request timeout or more, and longer than the lease).
const shortTimeouts = "short timeouts"

// noHashKV is P1's variant without the check after each defrag.
const noHashKV = "no HashKV check"

// Flags of P1's variants.
var (
	shortTimeoutFlags = []string{"--command-timeout=1s", "--lock-ttl=5s"}
	noHashKVFlags     = []string{"--verify-hashkv=false"}
)

// variants names P1's variants by their agent flags.
var variants = map[string]string{
	strings.Join(shortTimeoutFlags, " "): shortTimeouts,
	strings.Join(noHashKVFlags, " "):     noHashKV,
}

func runRoundCase(t *testing.T, pc roundCase) RoundCase {
	// The file grows to about 1.3 × the data written: beyond 1.5 GiB
	// written, etcd's default 2 GiB quota would end the fill.
	var quota int64
	if pc.dataMiB > 1500 {
		quota = 8 << 30
	}
	c := newCluster(t, pc.members, quota)
	ctx := within(t, 20*time.Minute)
	keys := pc.dataMiB * (1 << 20) / p1ValueSize
	res, err := c.Fill(ctx, etcddata.FillOptions{Keys: keys, ValueSize: p1ValueSize, Garbage: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("filled %d MiB in %v", res.BytesWritten>>20, res.Took.Round(time.Millisecond))
	snap := t.TempDir()
	start := time.Now()
	snapshot(t, c, snap)
	t.Logf("snapshot of the data directories in %v", time.Since(start).Round(time.Millisecond))
	du(t, snap)
	args := append(slices.Clone(p1Args), pc.args...)
	rc := RoundCase{Members: pc.members, DataMiB: pc.dataMiB, Label: pc.label(), ExtraArgs: pc.args, AgentArgs: args}
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := lead.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc.DBSize, rc.DBSizeInUse = st.DbSize, st.DbSizeInUse
	var history []*mvccpb.KeyValue // the agents' last/ records of the previous run
	for rep := range pc.reps {
		// Every run starts from the copy, so that the floor and the
		// agents find the same files after the same restart. The two
		// take turns going first, so that a drift of the machine
		// within a run (its disk's write-back, a neighbour) weighs on
		// both alike.
		var run RoundRun
		runFloor := func() {
			restore(t, c, snap)
			run.Floor, run.FloorDefrags = floor(t, c)
		}
		runAgents := func() {
			restore(t, c, snap)
			// The agents remember the previous run's defrags, as in a
			// cluster defragmented before: their forecasts then come
			// from their own records.
			putRecords(t, c, history)
			run.Agents, run.AgentsDefrags, run.Profile, run.Forecasts = agentsRound(t, c, args)
			history = lastRecords(t, c)
		}
		if rep%2 == 0 {
			runFloor()
			runAgents()
		} else {
			runAgents()
			runFloor()
		}
		t.Logf("run %d: floor %v, agents %v, ratio %.2f; profile %+v", rep+1, run.Floor.Round(time.Millisecond),
			run.Agents.Round(time.Millisecond), run.Ratio(), run.Profile)
		rc.Runs = append(rc.Runs, run)
	}
	return rc
}

// floor defragments every member back to back through its own endpoint,
// followers first, the leader last, and returns the time from the first
// request to the last answer and the defrags by the members' logs.
func floor(t *testing.T, c *e2e.Cluster) (time.Duration, []Interval) {
	t.Helper()
	ctx := within(t, 10*time.Minute)
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var order []*e2e.Member
	for _, m := range c.Members() {
		if m != lead {
			order = append(order, m)
		}
	}
	order = append(order, lead)
	obs := c.Observer()
	n := len(obs.Defrags())
	start := time.Now()
	for _, m := range order {
		cli, err := m.Client()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Defragment(ctx, m.ClientURL); err != nil {
			t.Fatalf("defragment %s: %v", m.Name, err)
		}
	}
	took := time.Since(start)
	if _, err := obs.WaitDefrags(ctx, n+len(order)); err != nil {
		t.Fatal(err)
	}
	return took, intervals(obs.DefragsSince(n), lead.Name)
}

// agentsRound starts one agent per member at once with --once and returns
// the time from the first start to the last exit, the defrags by the
// members' logs and the round's profile. Every agent must exit 0 and every
// member be defragmented once.
func agentsRound(t *testing.T, c *e2e.Cluster, args []string) (time.Duration, []Interval, RoundProfile, []Forecast) {
	t.Helper()
	ctx := within(t, 10*time.Minute)
	obs := c.Observer()
	n := len(obs.Defrags())
	lead := leaderName(ctx, c)
	start := time.Now()
	agents := c.StartAgents(t, e2e.AgentOptions{Args: args})
	exits := make([]time.Time, len(agents))
	codes := make([]int, len(agents))
	var wg sync.WaitGroup
	for i, a := range agents {
		wg.Go(func() {
			code, err := a.Wait(ctx)
			exits[i] = time.Now()
			if err != nil {
				code = -2
			}
			codes[i] = code
		})
	}
	wg.Wait()
	end := slices.MaxFunc(exits, func(a, b time.Time) int { return a.Compare(b) })
	for i, code := range codes {
		if code != 0 {
			t.Fatalf("the agent of %s exited %d; see %s", agents[i].Member.Name, code, agents[i].LogPath)
		}
	}
	ds, err := obs.WaitDefrags(ctx, n+len(agents))
	if err != nil {
		t.Fatal(err)
	}
	ds = ds[n:]
	e2e.CheckEachOnce(t, ds, c.Members())
	return end.Sub(start), intervals(ds, lead), profileRound(t, start, agents, exits, intervals(ds, lead)), forecasts(t, agents, ds)
}

// forecasts pairs each agent's forecast of its member's defrag with the
// defrag's duration by etcd's log.
func forecasts(t *testing.T, agents []*e2e.Agent, ds []e2e.Defrag) []Forecast {
	t.Helper()
	var out []Forecast
	for _, a := range agents {
		es, err := agentEvents(a.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Msg != "defragmenting" {
				continue
			}
			for _, d := range ds {
				if d.Member == a.Member.Name && !d.Running() {
					out = append(out, Forecast{
						Member: d.Member, Source: e.Source,
						Predicted: time.Duration(e.Expected * float64(time.Second)), Measured: d.Duration(),
					})
				}
			}
		}
	}
	return out
}

// lastRecords reads the agents' last/ records.
func lastRecords(t *testing.T, c *e2e.Cluster) []*mvccpb.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := c.Client().Get(ctx, c.LockPrefix+"last/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Kvs
}

// putRecords writes last/ records back (into a restored copy of the data),
// dated a day earlier: the defrags of a cluster defragmented before, whose
// copy rates the forecast uses and whose cooldown has passed (records put
// back as they were would keep every agent in its cooldown).
func putRecords(t *testing.T, c *e2e.Cluster, kvs []*mvccpb.KeyValue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, kv := range kvs {
		var l coord.Last
		if err := json.Unmarshal(kv.Value, &l); err != nil {
			t.Fatalf("last/ record %s: %v", kv.Key, err)
		}
		const day = 24 * time.Hour
		l.Start, l.End = l.Start.Add(-day), l.End.Add(-day)
		if !l.LastSuccess.IsZero() {
			l.LastSuccess = l.LastSuccess.Add(-day)
		}
		v, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client().Put(ctx, string(kv.Key), string(v)); err != nil {
			t.Fatal(err)
		}
	}
}

// profileRound splits the round into its parts (see RoundProfile) from the
// defrag intervals by etcd's log and the agents' log events.
func profileRound(t *testing.T, start time.Time, agents []*e2e.Agent, exits []time.Time, ds []Interval) RoundProfile {
	t.Helper()
	ds = slices.SortedFunc(slices.Values(ds), func(a, b Interval) int { return a.Start.Compare(b.Start) })
	byMember := map[string][]logEvent{}
	exitOf := map[string]time.Time{}
	var p RoundProfile
	for i, a := range agents {
		es, err := agentEvents(a.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		byMember[a.Member.Name] = es
		exitOf[a.Member.Name] = exits[i]
		for _, e := range es {
			if e.Msg == "cycle" {
				p.LeaderWait += seconds(e.LeaderWait)
				p.LockWait += seconds(e.LockWait)
			}
		}
	}
	event := func(member, msg string) time.Time {
		at, ok := firstEvent(byMember[member], msg)
		if !ok {
			t.Errorf("the agent of %s logged no %q event", member, msg)
		}
		return at
	}
	// The turn's own lock: an agent that took the lock and gave it up
	// again — the leader's, to wait for the followers, or a follower's, to
	// let a needier one go first — logs "lock taken" more than once.
	locked := func(member string) time.Time {
		dispatched := event(member, "defragmenting")
		var at time.Time
		for _, e := range byMember[member] {
			if e.Msg == "lock taken" && !e.Time.After(dispatched) {
				at = e.Time
			}
		}
		if at.IsZero() {
			t.Errorf("the agent of %s logged no %q event before its defrag", member, "lock taken")
		}
		return at
	}
	first, last := ds[0], ds[len(ds)-1]
	p.Start = first.Start.Sub(start)
	p.Exec = event(first.Member, "starting").Sub(start)
	p.Connect = event(first.Member, "status").Sub(event(first.Member, "starting"))
	p.Session = event(first.Member, "session started").Sub(event(first.Member, "status"))
	p.Queue = locked(first.Member).Sub(event(first.Member, "session started"))
	p.Checks = event(first.Member, "defragmenting").Sub(locked(first.Member))
	p.Dispatch = first.Start.Sub(event(first.Member, "defragmenting"))
	for i, d := range ds {
		p.Defrags += d.End.Sub(d.Start)
		if i == 0 {
			continue
		}
		prev := ds[i-1]
		p.Handoffs += d.Start.Sub(prev.End)
		done, lockedAt, defragmenting := event(prev.Member, "defragmented"), locked(d.Member), event(d.Member, "defragmenting")
		p.Turns = append(p.Turns, Handoff{
			From: prev.Member, To: d.Member, ToLeader: d.Leader,
			Verify: done.Sub(prev.End), Release: lockedAt.Sub(done), Checks: defragmenting.Sub(lockedAt), Dispatch: d.Start.Sub(defragmenting),
		})
	}
	p.Tail = slices.MaxFunc(exits, func(a, b time.Time) int { return a.Compare(b) }).Sub(last.End)
	p.TailVerify = event(last.Member, "defragmented").Sub(last.End)
	p.Exit = exitOf[last.Member].Sub(event(last.Member, "defragmented"))
	return p
}
