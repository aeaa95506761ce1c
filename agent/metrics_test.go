package agent

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestMetricsLint runs Prometheus' own linter on every metric the agent
// exports, so naming mistakes fail the build.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	newMetrics(reg, "test", true)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestMetricsAllLabelsFromStart: every label value exists before the first
// cycle, so rates and alerts work from the first scrape.
func TestMetricsAllLabelsFromStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	newMetrics(reg, "test", false)
	for name, want := range map[string]int{
		"etcd_defrag_agent_skips_total":              len(reasons),
		"etcd_defrag_agent_defragmentations_total":   3,
		"etcd_defrag_agent_rule_evaluations_total":   3,
		"etcd_defrag_agent_waiting":                  4,
		"etcd_defrag_agent_alarm_active":             2,
		"etcd_defrag_agent_nospace_recoveries_total": 2,
		"etcd_defrag_agent_known_defrag_bug":         2,
		"etcd_defrag_agent_guard_overrides_total":    2,
		"etcd_defrag_agent_expected_defrag_seconds":  1,
		"etcd_defrag_agent_disk_free_bytes":          0, // only with --data-dir
	} {
		got, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s has %d series, want %d", name, got, want)
		}
	}
}

// TestMetricsAfterCycle compares the counters after one defrag and one skip
// exactly.
func TestMetricsAfterCycle(t *testing.T) {
	c := newCluster(t, etcdtest.Options{})
	fill(t, c, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5})
	m := followers(t, c)[0]
	a := newTestAgent(t, c, m, "fragmentation > 0.1")
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	defrag := a.LastReport()
	if err := a.RunOnce(t.Context()); err != nil { // right after: nothing to reclaim
		t.Fatal(err)
	}
	want := `
# HELP etcd_defrag_agent_defragmentations_total Defragmentations of this member started by the agent, by result (success, error, verify_failed).
# TYPE etcd_defrag_agent_defragmentations_total counter
etcd_defrag_agent_defragmentations_total{result="error"} 0
etcd_defrag_agent_defragmentations_total{result="success"} 1
etcd_defrag_agent_defragmentations_total{result="verify_failed"} 0
# HELP etcd_defrag_agent_rule_evaluations_total Evaluations of the defrag rule, by result (true, false, error).
# TYPE etcd_defrag_agent_rule_evaluations_total counter
etcd_defrag_agent_rule_evaluations_total{result="error"} 0
etcd_defrag_agent_rule_evaluations_total{result="false"} 1
etcd_defrag_agent_rule_evaluations_total{result="true"} 2
# HELP etcd_defrag_agent_cycles_total Cycles run (scheduled, requested by the leader's agent, or --once).
# TYPE etcd_defrag_agent_cycles_total counter
etcd_defrag_agent_cycles_total 2
# HELP etcd_defrag_agent_defrag_in_progress 1 while this agent's member is being defragmented by the agent.
# TYPE etcd_defrag_agent_defrag_in_progress gauge
etcd_defrag_agent_defrag_in_progress 0
# HELP etcd_defrag_agent_is_leader 1 if the member led the cluster at the last status read.
# TYPE etcd_defrag_agent_is_leader gauge
etcd_defrag_agent_is_leader 0
`
	if err := testutil.GatherAndCompare(a.reg, strings.NewReader(want),
		"etcd_defrag_agent_defragmentations_total", "etcd_defrag_agent_rule_evaluations_total",
		"etcd_defrag_agent_cycles_total", "etcd_defrag_agent_defrag_in_progress", "etcd_defrag_agent_is_leader"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(a.metrics.skips.WithLabelValues(string(ReasonRuleFalse))); got != 1 {
		t.Errorf("skips_total{reason=rule_false} = %v, want 1", got)
	}
	rep := a.LastReport()
	first := a.metrics
	if got := testutil.ToFloat64(first.dbSize); got != float64(rep.Before.DBSize) {
		t.Errorf("db_size_bytes = %v, want the last status read %d", got, rep.Before.DBSize)
	}
	if got := testutil.ToFloat64(first.reclaimed); got <= 0 || got != float64(defrag.Reclaimed) {
		t.Errorf("reclaimed_bytes_total = %v, want the defrag's %d (> 0)", got, defrag.Reclaimed)
	}
	if got := testutil.CollectAndCount(first.defragDuration); got != 1 {
		t.Errorf("defrag_duration_seconds has %d series, want 1", got)
	}
	if got := testutil.ToFloat64(first.lastSuccess); got <= 0 {
		t.Errorf("last_success_timestamp_seconds = %v, want a time", got)
	}
}
