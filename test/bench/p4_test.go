//go:build bench && linux

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/test/e2e"
)

// clockTicks is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTicks = 100

// TestP4IdleFootprint runs three agents beside a three-member cluster that
// needs no defrag, checking on cfg.p4Schedule, for cfg.p4Idle, and records
// each agent's highest resident set (from /proc, every second), the CPU
// time it spent over the window (from /proc/<pid>/stat) and its own
// process_resident_memory_bytes at the end. It runs beside P3: an idle
// agent's memory and CPU time do not depend on the load around it.
func TestP4IdleFootprint(t *testing.T) {
	track(t)
	t.Parallel()
	c := newCluster(t, 3, 0)
	agents := c.StartAgents(t, e2e.AgentOptions{Args: []string{"--schedule=" + cfg.p4Schedule, "--lock-ttl=30s", "--log.level=info"}})
	ctx := within(t, cfg.p4Idle+2*time.Minute)
	for _, a := range agents {
		if err := a.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The first cycle runs at start; the window begins after it.
	if err := c.Observer().WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	fp := Footprint{Idle: cfg.p4Idle, Schedule: cfg.p4Schedule}
	cpu0 := make([]time.Duration, len(agents))
	fp.RSSMax = make([]int64, len(agents))
	for i, a := range agents {
		var err error
		if cpu0[i], err = procCPU(a.PID()); err != nil {
			t.Fatal(err)
		}
	}
	end := time.Now().Add(cfg.p4Idle)
	for time.Now().Before(end) {
		for i, a := range agents {
			rss, err := procRSS(a.PID())
			if err != nil {
				t.Fatal(err)
			}
			fp.RSSMax[i] = max(fp.RSSMax[i], rss)
		}
		if err := sleep(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for i, a := range agents {
		cpu, err := procCPU(a.PID())
		if err != nil {
			t.Fatal(err)
		}
		fp.CPU = append(fp.CPU, cpu-cpu0[i])
		ms, err := a.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fp.MetricRSS = append(fp.MetricRSS, int64(ms["process_resident_memory_bytes"]))
		cycles := ms["etcd_defrag_agent_cycles_total"]
		t.Logf("agent of %s: RSS max %s, CPU %v over %v, process_resident_memory_bytes %s, %v cycles",
			a.Member.Name, mib(fp.RSSMax[i]), fp.CPU[i], cfg.p4Idle, mib(fp.MetricRSS[i]), cycles)
	}
	results.Update(func(r *Results) {
		if r.Footprint == nil {
			r.Footprint = &Footprint{}
		}
		r.Footprint.Idle, r.Footprint.Schedule = fp.Idle, fp.Schedule
		r.Footprint.RSSMax, r.Footprint.CPU, r.Footprint.MetricRSS = fp.RSSMax, fp.CPU, fp.MetricRSS
	})
}

// TestP4MetricsScrape scrapes one agent's /metrics cfg.p4Scrapes times, one
// after the other on one keep-alive connection, as Prometheus does, and
// records the latency of each (request sent to body read).
func TestP4MetricsScrape(t *testing.T) {
	track(t)
	c := newCluster(t, 3, 0)
	agents := c.StartAgents(t, e2e.AgentOptions{Args: []string{"--schedule=@every 1h", "--lock-ttl=30s", "--log.level=info"}})
	ctx := within(t, 5*time.Minute)
	for _, a := range agents {
		if err := a.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Observer().WaitAgentsIdle(ctx, c.Members()); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	url := "http://" + agents[0].WebAddr + "/metrics"
	var lat []time.Duration
	var size int
	for range cfg.p4Scrapes {
		start := time.Now()
		n, err := get(ctx, client, url)
		if err != nil {
			t.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		size = n
	}
	fp := Footprint{Scrapes: len(lat), ScrapeP50: Percentile(lat, 50), ScrapeP99: Percentile(lat, 99), ScrapeMax: Percentile(lat, 100), MetricsBytes: size}
	t.Logf("/metrics: %d scrapes of %d bytes: p50 %v, p99 %v, max %v", fp.Scrapes, size, fp.ScrapeP50, fp.ScrapeP99, fp.ScrapeMax)
	results.Update(func(r *Results) {
		if r.Footprint == nil {
			r.Footprint = &Footprint{}
		}
		r.Footprint.Scrapes, r.Footprint.ScrapeP50, r.Footprint.ScrapeP99, r.Footprint.ScrapeMax = fp.Scrapes, fp.ScrapeP50, fp.ScrapeP99, fp.ScrapeMax
		r.Footprint.MetricsBytes = fp.MetricsBytes
	})
}

// TestP4RuleEval runs the rule package's own benchmark of the default
// rule, rule.BenchmarkEvalDefault, and records its ns/op, B/op and
// allocs/op (the median of five runs).
func TestP4RuleEval(t *testing.T) {
	track(t)
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkEvalDefault$", "-benchmem", "-count", "5"}
	if cfg.quick {
		args = []string{"test", "-run", "^$", "-bench", "^BenchmarkEvalDefault$", "-benchmem", "-count", "1", "-benchtime", "1000x"}
	}
	args = append(args, "./rule/")
	cmd := exec.CommandContext(within(t, 5*time.Minute), "go", args...)
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	ns, b, allocs, err := parseBench(string(out))
	if err != nil {
		t.Fatalf("%v in:\n%s", err, out)
	}
	t.Logf("rule.BenchmarkEvalDefault: %.0f ns/op, %.0f B/op, %.0f allocs/op", ns, b, allocs)
	results.Update(func(r *Results) {
		if r.Footprint == nil {
			r.Footprint = &Footprint{}
		}
		r.Footprint.RuleNsPerOp, r.Footprint.RuleBytesPerOp, r.Footprint.RuleAllocsPerOp = ns, b, allocs
	})
}

var benchLine = regexp.MustCompile(`(?m)^BenchmarkEvalDefault\S*\s+\d+\s+([\d.]+) ns/op\s+([\d.]+) B/op\s+([\d.]+) allocs/op`)

// parseBench returns the medians of a Go benchmark's ns/op, B/op and
// allocs/op lines.
func parseBench(out string) (ns, b, allocs float64, err error) {
	var nss, bs, as []float64
	for _, m := range benchLine.FindAllStringSubmatch(out, -1) {
		for i, dst := range []*[]float64{&nss, &bs, &as} {
			v, err := strconv.ParseFloat(m[i+1], 64)
			if err != nil {
				return 0, 0, 0, err
			}
			*dst = append(*dst, v)
		}
	}
	if len(nss) == 0 {
		return 0, 0, 0, fmt.Errorf("no BenchmarkEvalDefault result")
	}
	return Median(nss), Median(bs), Median(as), nil
}

// get fetches url and returns the body's size.
func get(ctx context.Context, client *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s answered %d", url, resp.StatusCode)
	}
	return int(n), err
}

// procRSS returns a process's resident set size (VmRSS).
func procRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// procCPU returns the CPU time (user and system) a process has spent.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command may contain spaces: the fields after it follow the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	// After ')': state(0) ppid ... utime is field 14 of the line, index 11 here; stime 12.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}
