package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// at returns a time s seconds after a fixed origin.
func at(s float64) time.Time {
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(s * float64(time.Second)))
}

// sample returns results as a full run fills them in, with made-up numbers.
func sample() *Results {
	run := func(floor, agents float64) RoundRun {
		return RoundRun{
			Floor: seconds(floor), Agents: seconds(agents),
			FloorDefrags:  []Interval{{Member: "m1", Start: at(0), End: at(floor / 3)}},
			AgentsDefrags: []Interval{{Member: "m1", Start: at(0.2), End: at(0.2 + floor/3)}},
			Profile: RoundProfile{Start: seconds(0.2), Defrags: seconds(floor), Handoffs: seconds(0.3), Tail: seconds(0.2), TailVerify: seconds(0.15),
				Exec: seconds(0.01), Connect: seconds(0.02), Session: seconds(0.03), Queue: seconds(0.04), Checks: seconds(0.05), Dispatch: seconds(0.01),
				Turns: []Handoff{{From: "m1", To: "m2", Verify: seconds(0.15), Release: seconds(0.05), Checks: seconds(0.08), Dispatch: seconds(0.02)},
					{From: "m2", To: "m0", ToLeader: true, Verify: seconds(0.15), Release: seconds(0.05), Checks: seconds(0.08), Dispatch: seconds(0.02)}}},
		}
	}
	var rounds []RoundCase
	for _, n := range []int{3, 5, 7} {
		for _, d := range []int{100, 300, 1000} {
			if n == 7 && d != 300 {
				continue
			}
			f := float64(n*d) / 400
			rounds = append(rounds, RoundCase{Members: n, DataMiB: d, AgentArgs: []string{"--once", "--defrag-rule=fragmentation > 0.25"},
				DBSize: int64(d) << 20, DBSizeInUse: int64(d) << 19, Runs: []RoundRun{run(f, f*1.1), run(f, f*1.3)}})
		}
	}
	return &Results{
		Command: "make bench", Started: at(0), Finished: at(1500), LoadStart: [3]float64{0.1, 0.2, 0.3}, LoadEnd: [3]float64{1, 1, 1},
		Machine: Machine{CPU: "AMD EPYC", Cores: 2, MemBytes: 24 << 30, Go: "go1.26"}, Etcd: "3.6.16", Agent: "v0.1.0",
		Rounds: rounds,
		Impact: &ClientImpact{Members: 3, DataMiB: 300, Rate: 500, Clients: 10, ValueSize: 1024, Timeout: 5 * time.Second, Phases: []LoadPhase{
			{Name: "(a) no defrag", Requests: 30000, P50: time.Millisecond, P99: 8 * time.Millisecond, Max: 40 * time.Millisecond, Stall: 30 * time.Millisecond},
			{Name: "(b) the agents' round", Requests: 7000, P50: time.Millisecond, P99: 400 * time.Millisecond, Max: 900 * time.Millisecond, Stall: 850 * time.Millisecond,
				Defrags: []Interval{{Member: "m0", Start: at(5), End: at(5.8)}}},
		}},
		Quota: []QuotaKeeping{{Name: "moderate", Plot: "p3.png", Quota: 64 << 20, Duration: 10 * time.Minute, Compaction: "--auto-compaction-mode=periodic", Churn: ChurnOptions{
			Classes: []ChurnClass{{Name: "obj", Keys: 200, MinValue: 1 << 10, MaxValue: 512 << 10, Rate: 3.5, DeleteShare: 0.1}}},
			Variants: []QuotaVariant{
				{Name: "(a) no defrag", How: "nothing", Alarms: 3, FirstAlarm: 7 * time.Minute, Peak: map[string]float64{"m0": 1, "m1": 1, "m2": 0.99}},
				{Name: "(c) agents, defaults", How: "`--schedule='@every 10s'`", Defrags: 6, Peak: map[string]float64{"m0": 0.85, "m1": 0.84, "m2": 0.86}},
			}}},
		Footprint: &Footprint{Idle: 5 * time.Minute, Schedule: "@every 1m", RSSMax: []int64{22 << 20, 23 << 20, 22 << 20},
			CPU: []time.Duration{time.Second, time.Second, time.Second}, MetricRSS: []int64{22 << 20, 23 << 20, 22 << 20},
			Scrapes: 1000, ScrapeP50: time.Millisecond, ScrapeP99: 3 * time.Millisecond, ScrapeMax: 9 * time.Millisecond, MetricsBytes: 16000,
			RuleNsPerOp: 280, RuleBytesPerOp: 184, RuleAllocsPerOp: 4},
		NoSpace: []NoSpaceCase{{Quota: 16 << 20, Schedule: "@every 1s", Members: 3, Runs: []NSRun{{Writable: 800 * time.Millisecond,
			FromFirst: 400 * time.Millisecond, Defrags: []Interval{{Member: "m0", Start: at(1), End: at(1.1)}}}}}},
	}
}

// TestWriteReport renders a report of made-up results, with its plots, and
// checks the goals' verdicts and that the results survive a round trip
// through results.json (the report can be rendered again from it).
func TestWriteReport(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bench"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := sample()
	path := filepath.Join(dir, "bench", "results.json")
	if err := r.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := LoadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteReport(dir, back); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"| P1: agents' round ≤ 1.2 × back-to-back defrags, start-up included (3 and 5 members) | worst median ratio 1.20",
		"| P2 (b): no failed request, longest stall ≤ longest single-member defrag + 100 ms | 0 failed; stall 850 ms, limit 900 ms | **met** |",
		"| P3 (c), moderate: no NOSPACE, peak dbSize ≤ 90 % of the quota (agents, defaults) | 0 NOSPACE alarms, peak 86 % | **met** |",
		"| P4: resident memory ≤ 30 MiB | 23.0 MiB at most | **met** |",
		"![P1 ratios](bench/p1-ratio.png)",
		"![Scale](bench/scale.png)",
		"| 7 | ",
		"| agents' own time |",
		"| AMD EPYC, 2 cores |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("BENCHMARKS.md lacks %q:\n%s", want, md)
		}
	}
	for _, name := range []string{plotRatios, plotScale} {
		if st, err := os.Stat(filepath.Join(dir, "bench", name)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", name, err)
		}
	}
}

// TestPlots draws P2's and P3's plots from made-up series.
func TestPlots(t *testing.T) {
	dir := t.TempDir()
	var pts []LatencyPoint
	for i := range 2000 {
		s := float64(i) / 100
		lat := 2 * time.Millisecond
		if s > 5 && s < 6 {
			lat = time.Duration((6 - s) * float64(time.Second))
		}
		pts = append(pts, LatencyPoint{At: at(s), Latency: lat, Failed: i == 1000})
	}
	if err := PlotLatency(filepath.Join(dir, "lat.png"), []LatencyPhase{
		{Name: "a", Start: at(0), Points: pts},
		{Name: "b", Start: at(0), Points: pts, Defrags: []Interval{{Member: "m0", Start: at(5), End: at(6)}, {Member: "m1", Start: at(7), End: at(7.5)}}},
	}); err != nil {
		t.Fatal(err)
	}
	series := map[string][]SizePoint{}
	for _, m := range []string{"m0", "m1", "m2"} {
		for i := range 600 {
			series[m] = append(series[m], SizePoint{At: at(float64(i)), DBSize: int64(i) << 17, InUse: int64(i) << 16})
		}
	}
	if err := PlotSizes(filepath.Join(dir, "sizes.png"), []SizePhase{
		{Name: "a", Start: at(0), Quota: 64 << 20, Series: series, Alarms: []time.Time{at(500)}},
		{Name: "c", Start: at(0), Quota: 64 << 20, Series: series, Defrags: []Interval{{Member: "m1", Start: at(300), End: at(301)}}},
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lat.png", "sizes.png"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", name, err)
		}
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	if got := Median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("Median(3, 1, 2) = %v, want 2", got)
	}
	tests := []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {99, 10}, {100, 10}, {0, 1}, {10, 1}}
	for _, tt := range tests {
		if got := Percentile(ds, tt.p); got != tt.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", ds, tt.p, got, tt.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil, 50) = %v, want 0", got)
	}
}

func TestChurnDue(t *testing.T) {
	opts := ChurnOptions{Alternate: time.Minute, Classes: []ChurnClass{{Name: "a"}, {Name: "b"}}}
	start := at(0)
	tests := []struct {
		class int
		t     float64
		want  float64
	}{
		{0, 10, 10}, {0, 70, 120}, {0, 130, 130}, {1, 10, 60}, {1, 70, 70}, {1, 125, 180},
	}
	for _, tt := range tests {
		got := opts.Classes[tt.class].due(opts, tt.class, start, at(tt.t))
		if !got.Equal(at(tt.want)) {
			t.Errorf("class %d due(%vs) = %vs, want %vs", tt.class, tt.t, got.Sub(start).Seconds(), tt.want)
		}
	}
}
