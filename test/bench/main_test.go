//go:build bench && linux

package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/test/e2e"
)

// Environment variables of the suite (see the Makefile's bench targets).
const (
	// envQuick runs every benchmark briefly, so that the suite never rots;
	// its numbers mean nothing.
	envQuick = "BENCH_QUICK"
	// envOut is the directory of the report (BENCHMARKS.md) and of its
	// bench/ directory (plots, results.json). Default: docs for a full
	// run, bin/bench-quick in quick mode.
	envOut = "BENCH_OUT"
	// envCommand is the command line the report names ("make bench").
	envCommand = "BENCH_COMMAND"
	// envQuietLoad makes the run wait, up to envQuietTimeout, until the
	// 1-minute load average has stayed below this value for a minute.
	envQuietLoad    = "BENCH_QUIET_LOAD"
	envQuietTimeout = "BENCH_QUIET_TIMEOUT"
	// envP1 replaces P1's cases: members x MiB x repetitions, with agent
	// flags after a colon, comma separated
	// ("3x100x3,5x1000x1:--verify-hashkv=false").
	envP1 = "BENCH_P1"
	// envMerge starts from the output directory's results.json and replaces
	// only what this run measures (the P1 cases it runs, P2 to P5), noting
	// the run in the report.
	envMerge = "BENCH_MERGE"
	// envReportOnly renders the report again from the results.json of the
	// output directory, without running anything.
	envReportOnly = "BENCH_REPORT_ONLY"
)

// cfg is the suite's configuration, set by TestMain before the tests.
var cfg config

// results collects what the benchmarks measured; TestMain writes it.
var results = &Results{}

// config says what the benchmarks run: sizes, durations, repetitions.
type config struct {
	quick bool
	out   string // the report's directory

	p1 []roundCase

	p2Members, p2DataMiB int
	p2Rate               float64
	// p2ShortTimeout is the agents' --command-timeout in phase (e): the
	// shortest the agent takes (at p2DataMiB a defrag lasts one to two
	// times as long here; P1's short-timeout case has the longer ones).
	p2ShortTimeout time.Duration
	// p2Phase is the length of phase (a); p2Margin the load before and
	// after the defrags of the other phases.
	p2Phase, p2Margin time.Duration

	p3Duration  time.Duration
	p3Quota     int64
	p3Workloads []p3Workload
	// p3Cron is the period of P3's fixed schedule, variant (b).
	p3Cron time.Duration

	p4Idle     time.Duration
	p4Schedule string
	p4Scrapes  int

	p5 []nsCase
}

func fullConfig() config {
	return config{
		p1: []roundCase{
			// The 1000 MiB cases hold the goal of 1.05: a defrag's own
			// duration varies by a tenth between runs here, so they take
			// more runs.
			{members: 3, dataMiB: 100, reps: 3}, {members: 3, dataMiB: 300, reps: 3}, {members: 3, dataMiB: 1000, reps: 11},
			{members: 5, dataMiB: 100, reps: 3}, {members: 5, dataMiB: 300, reps: 3}, {members: 5, dataMiB: 1000, reps: 5},
			// What the HashKV check costs the round, beside the agents'
			// own steps: the same case without it.
			{members: 3, dataMiB: 1000, reps: 5, args: noHashKVFlags},
			{members: 5, dataMiB: 1000, reps: 2, args: noHashKVFlags},
			{members: 7, dataMiB: 300, reps: 2},
			// About 8 s per defrag here: eight times the shortest request
			// timeout the agent takes, and longer than the lease.
			{members: 3, dataMiB: 2000, reps: 1, args: shortTimeoutFlags},
		},
		p2Members: 3, p2DataMiB: 300, p2Rate: 500, p2Phase: 60 * time.Second, p2Margin: 5 * time.Second,
		p2ShortTimeout: time.Second, // the shortest the agent takes
		p3Duration:     10 * time.Minute, p3Quota: 64 << 20, p3Cron: 5 * time.Minute,
		p3Workloads: []p3Workload{{"moderate churn, 2.8 operations/s", 2.8}, {"heavy churn, 3.5 operations/s", 3.5}},
		p4Idle:      5 * time.Minute, p4Schedule: "@every 1m", p4Scrapes: 1000,
		p5: []nsCase{{16 << 20, 3}, {256 << 20, 2}},
	}
}

func quickConfig() config {
	return config{
		quick: true,
		p1: []roundCase{
			{members: 3, dataMiB: 20, reps: 2}, {members: 5, dataMiB: 20, reps: 1},
			{members: 3, dataMiB: 20, reps: 1, args: shortTimeoutFlags},
		},
		p2Members: 3, p2DataMiB: 20, p2Rate: 200, p2Phase: 4 * time.Second, p2Margin: 2 * time.Second, p2ShortTimeout: time.Second,
		// A small quota, so that in 75 s NOSPACE, the fixed schedule and
		// the agents' defrags all happen.
		p3Duration: 75 * time.Second, p3Quota: 16 << 20, p3Cron: 30 * time.Second,
		p3Workloads: []p3Workload{{"moderate churn", 2.8}, {"heavy churn", 3.5}},
		p4Idle:      15 * time.Second, p4Schedule: "@every 5s", p4Scrapes: 100,
		p5: []nsCase{{16 << 20, 1}},
	}
}

func TestMain(m *testing.M) { os.Exit(benchMain(m)) }

// benchmarksRan is set by every benchmark (track): without one, nothing is
// written.
var benchmarksRan atomic.Bool

func benchMain(m *testing.M) int {
	if os.Getenv(e2e.EnvVersions) == "" {
		_ = os.Setenv(e2e.EnvVersions, "3.6")
	}
	cfg = fullConfig()
	if on, _ := strconv.ParseBool(os.Getenv(envQuick)); on {
		cfg = quickConfig()
	}
	if v := os.Getenv(envP1); v != "" {
		cases, err := parseRoundCases(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", envP1, err)
			return 2
		}
		cfg.p1 = cases
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg.out = filepath.Join(root, "docs")
	if cfg.quick {
		cfg.out = filepath.Join(root, "bin", "bench-quick")
	}
	if o := os.Getenv(envOut); o != "" {
		cfg.out = o
	}
	if err := os.MkdirAll(filepath.Join(cfg.out, "bench"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resultsPath := filepath.Join(cfg.out, "bench", "results.json")
	if on, _ := strconv.ParseBool(os.Getenv(envReportOnly)); on {
		r, err := LoadResults(resultsPath)
		if err == nil {
			err = WriteReport(cfg.out, r)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}

	waited, err := waitQuiet()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	command := os.Getenv(envCommand)
	if command == "" {
		command = "go test " + strings.Join(os.Args[1:], " ")
	}
	var merge *Merge
	if on, _ := strconv.ParseBool(os.Getenv(envMerge)); on {
		prev, err := LoadResults(resultsPath)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", envMerge, err)
			return 1
		}
		results, merge = prev, &Merge{Command: command, Started: time.Now(), Agent: gitDescribe(root)}
	} else {
		results.Quick, results.QuietWait = cfg.quick, waited
		results.Command = command
		results.Agent = gitDescribe(root)
		results.Started = time.Now()
		results.LoadStart, _ = LoadAvg()
		results.Machine = DescribeMachine(os.TempDir())
	}
	fmt.Fprintf(os.Stderr, "bench: load %v at the start; machine %+v\n", results.LoadStart, results.Machine)

	code := e2e.Main(m)
	if !benchmarksRan.Load() {
		// Only the harness's own tests ran (go test -run Report): the
		// recorded results stay as they are.
		return code
	}

	if merge != nil {
		merge.Finished = time.Now()
		merge.LoadEnd, _ = LoadAvg()
		results.Merges = append(results.Merges, *merge)
	} else {
		results.Finished = time.Now()
		results.LoadEnd, _ = LoadAvg()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if e, err := e2e.EtcdBinary(ctx, etcdLine()); err == nil {
		results.Etcd = e.Version
	}
	cancel()
	if err := results.Save(resultsPath); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := WriteReport(cfg.out, results); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "bench: report in %s (ran %v, load %v at the end)\n",
		filepath.Join(cfg.out, "BENCHMARKS.md"), results.Finished.Sub(results.Started).Round(time.Second), results.LoadEnd)
	return code
}

// waitQuiet waits, when envQuietLoad is set, until the 1-minute load
// average has stayed below it for a minute, and returns how long it waited.
func waitQuiet() (time.Duration, error) {
	v := os.Getenv(envQuietLoad)
	if v == "" {
		return 0, nil
	}
	limit, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %w", envQuietLoad, v, err)
	}
	timeout := 2 * time.Hour
	if s := os.Getenv(envQuietTimeout); s != "" {
		if timeout, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%s=%q: %w", envQuietTimeout, s, err)
		}
	}
	start := time.Now()
	var quietSince time.Time
	for {
		l, err := LoadAvg()
		if err != nil {
			return 0, err
		}
		switch {
		case l[0] >= limit:
			quietSince = time.Time{}
		case quietSince.IsZero():
			quietSince = time.Now()
		case time.Since(quietSince) >= time.Minute:
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("the machine was not quiet (1-minute load average below %v for a minute) within %v; last %v", limit, timeout, l)
		}
		time.Sleep(5 * time.Second)
	}
}

// gitDescribe names the agent's source version.
func gitDescribe(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "devel"
	}
	return strings.TrimSpace(string(out))
}

// track records whether a benchmark failed in the results, so the report
// says so (a merged run that passes it clears the failure of the run it
// merges into), and the load average at its start and end.
func track(t *testing.T) {
	benchmarksRan.Store(true)
	noteLoad()
	t.Cleanup(func() {
		noteLoad()
		results.Update(func(r *Results) {
			if !t.Failed() {
				delete(r.Failed, t.Name())
				return
			}
			if r.Failed == nil {
				r.Failed = map[string]bool{}
			}
			r.Failed[t.Name()] = true
		})
	})
}

// parseRoundCases reads envP1.
func parseRoundCases(v string) ([]roundCase, error) {
	var out []roundCase
	for c := range strings.SplitSeq(v, ",") {
		var rc roundCase
		size, args, _ := strings.Cut(strings.TrimSpace(c), ":")
		if _, err := fmt.Sscanf(size, "%dx%dx%d", &rc.members, &rc.dataMiB, &rc.reps); err != nil {
			return nil, fmt.Errorf("case %q: want membersxMiBxrepetitions[:agent flags]: %w", c, err)
		}
		rc.args = strings.Fields(args)
		out = append(out, rc)
	}
	return out, nil
}

// noteLoad reads the 1-minute load average into the results' maximum. It
// runs when a benchmark starts and ends and during P3 (a goroutine of its
// own would be a leak to e2e.Main's check).
func noteLoad() {
	if l, err := LoadAvg(); err == nil {
		results.Update(func(r *Results) { r.LoadMax = max(r.LoadMax, l[0]) })
	}
}
