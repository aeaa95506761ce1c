package manifests

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	// etcd's server packages register their metrics with the default
	// registry when they are loaded: TestEtcdMetricNames reads them there.
	_ "go.etcd.io/etcd/server/v3/storage"
	_ "go.etcd.io/etcd/server/v3/storage/backend"
	_ "go.etcd.io/etcd/server/v3/storage/mvcc"
)

// etcdMetrics are the metrics of etcd itself that the alerts and the
// dashboard may use, with their types: the ones DESIGN §6 names, which a
// member exports on its /metrics in every version the agent supports.
// TestEtcdMetricNames checks that the etcd server of go.mod registers each
// of them with that type.
var etcdMetrics = map[string]string{
	"etcd_mvcc_db_total_size_in_bytes":          "gauge",     // storage/mvcc/metrics.go
	"etcd_mvcc_db_total_size_in_use_in_bytes":   "gauge",     // storage/mvcc/metrics.go
	"etcd_server_quota_backend_bytes":           "gauge",     // storage/metrics.go
	"etcd_disk_defrag_inflight":                 "gauge",     // storage/backend/metrics.go
	"etcd_disk_backend_defrag_duration_seconds": "histogram", // storage/backend/metrics.go
}

// prometheusMetrics are series Prometheus makes itself for every target.
var prometheusMetrics = map[string]string{"up": "gauge"}

// targetLabels are the labels the PodMonitor's scrape adds to every series.
var targetLabels = []string{"job", "namespace", "pod", "instance", "container", "endpoint", "service"}

func TestEtcdMetricNames(t *testing.T) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := make(map[string]string)
	for _, mf := range mfs {
		registered[mf.GetName()] = strings.ToLower(mf.GetType().String())
	}
	for name, typ := range etcdMetrics {
		if got, ok := registered[name]; !ok {
			t.Errorf("etcd does not register %s", name)
		} else if got != typ {
			t.Errorf("etcd registers %s as a %s, want %s", name, got, typ)
		}
	}
}

// agentScrape is what a running agent exports: each metric's type and the
// label values of its series.
type agentScrape struct {
	types  map[string]string                     // metric family name -> type
	labels map[string]map[string]map[string]bool // series name -> label -> values
}

var scraped = struct {
	once sync.Once
	s    agentScrape
	err  string
}{}

var seriesLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? `)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// scrapeAgent runs the agent binary (no etcd is needed: every metric and
// label value exists from the start) and reads its /metrics once.
func scrapeAgent(t *testing.T) agentScrape {
	t.Helper()
	scraped.once.Do(func() {
		bin := buildAgent(t)
		addr := freeAddr(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// With --data-dir the agent exports disk_free_bytes too.
		cmd := exec.CommandContext(ctx, bin, "--endpoints", "127.0.0.1:1", "--web.listen-address", addr,
			"--schedule", "@every 1h", "--log.level", "error", "--data-dir", os.TempDir())
		if err := cmd.Start(); err != nil {
			scraped.err = err.Error()
			return
		}
		defer func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}()
		var body string
		for {
			code, b, err := httpGet(ctx, "http://"+addr+"/metrics")
			if err == nil && code == 200 {
				body = b
				break
			}
			if ctx.Err() != nil {
				scraped.err = "no /metrics from the agent within a minute"
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		s := agentScrape{types: map[string]string{}, labels: map[string]map[string]map[string]bool{}}
		for _, line := range strings.Split(body, "\n") {
			if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
				s.types[f[2]] = f[3]
				continue
			}
			m := seriesLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			ls := s.labels[m[1]]
			if ls == nil {
				ls = map[string]map[string]bool{}
				s.labels[m[1]] = ls
			}
			for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
				if ls[p[1]] == nil {
					ls[p[1]] = map[string]bool{}
				}
				ls[p[1]][p[2]] = true
			}
		}
		scraped.s = s
	})
	if scraped.err != "" {
		t.Fatal(scraped.err)
	}
	return scraped.s
}

// metricType returns the type of a series name used in a query: an agent
// metric (from the scrape), one of etcdMetrics, or up; the _bucket, _sum and
// _count series of a histogram count as the histogram. ok is false for a name
// nobody exports.
func metricType(s agentScrape, name string) (family, typ string, ok bool) {
	known := func(n string) (string, bool) {
		if strings.HasPrefix(n, "etcd_defrag_agent_") {
			typ, ok := s.types[n]
			return typ, ok
		}
		if typ, ok := etcdMetrics[n]; ok {
			return typ, true
		}
		typ, ok := prometheusMetrics[n]
		return typ, ok
	}
	if typ, ok := known(name); ok {
		return name, typ, typ != "histogram" && typ != "summary"
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suffix)
		if !found {
			continue
		}
		if typ, ok := known(base); ok && (typ == "histogram" || (typ == "summary" && suffix != "_bucket")) {
			return base, typ, true
		}
	}
	return "", "", false
}

var promqlParser = parser.NewParser(parser.Options{})

// literalAlternatives matches a regular expression that is only literal
// alternatives, such as "lock_timeout|leader_wait_timeout".
var literalAlternatives = regexp.MustCompile(`^[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*$`)

// checkQuery parses a PromQL expression with Prometheus' parser and checks
// that it names only metrics the agent, etcd or Prometheus export, by their
// names (never by a __name__ matcher), and that its label matchers on agent
// metrics use labels and values the agent exports. It returns the metric
// families used.
func checkQuery(t *testing.T, what, expr string) []string {
	t.Helper()
	s := scrapeAgent(t)
	e, err := promqlParser.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %v\n%s", what, err, expr)
		return nil
	}
	var families []string
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name == "" {
			t.Errorf("%s: selector %s has no metric name", what, vs)
			return nil
		}
		family, _, ok := metricType(s, vs.Name)
		if !ok {
			t.Errorf("%s: nobody exports %s (the agent, etcd's %v, Prometheus' up)", what, vs.Name, mapKeys(etcdMetrics))
			return nil
		}
		families = append(families, family)
		if !strings.HasPrefix(vs.Name, "etcd_defrag_agent_") {
			return nil
		}
		own := s.labels[vs.Name]
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel {
				continue
			}
			values, isOwn := own[m.Name]
			if !isOwn {
				if !slices.Contains(targetLabels, m.Name) && m.Name != "le" {
					t.Errorf("%s: %s has no label %q (its labels: %v; target labels: %v)", what, vs.Name, m.Name, mapKeys(own), targetLabels)
				}
				continue
			}
			var want []string
			switch m.Type {
			case labels.MatchEqual, labels.MatchNotEqual:
				want = []string{m.Value}
			case labels.MatchRegexp, labels.MatchNotRegexp:
				if literalAlternatives.MatchString(m.Value) {
					want = strings.Split(m.Value, "|")
				}
			}
			for _, v := range want {
				if !values[v] {
					t.Errorf("%s: %s{%s} has no value %q (its values: %v)", what, vs.Name, m.Name, v, mapKeys(values))
				}
			}
		}
		return nil
	})
	return families
}

func mapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
