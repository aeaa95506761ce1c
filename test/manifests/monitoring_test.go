package manifests

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"text/template"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
)

// agentJob is the job label the PodMonitor gives the agents' series; the
// alerts and the dashboard select it.
const agentJob = "etcd-defrag-agent"

// prometheusTemplateFuncs are the functions Prometheus offers to alert
// templates (prometheus/template/template.go), for parsing only.
var prometheusTemplateFuncs = func() template.FuncMap {
	fm := template.FuncMap{}
	for _, name := range strings.Fields("query first label value strvalue args reReplaceAll safeHtml match title toUpper toLower " +
		"graphLink tableLink sortByLabel stripPort stripDomain humanize humanize1024 humanizeDuration humanizePercentage " +
		"humanizeTimestamp toTime toDuration now pathPrefix externalURL parseDuration urlQueryEscape tmpl") {
		fm[name] = func(...any) any { return nil }
	}
	return fm
}()

func TestPrometheusRule(t *testing.T) {
	rule := find[monitoringv1.PrometheusRule](t, decodeAll(t, "prometheusrule.yaml", readFile(t, "manifests/monitoring/prometheusrule.yaml")), "PrometheusRule", "")
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without an alert name (record rules are not expected)", g.Name)
				continue
			}
			what := "alert " + r.Alert
			if seen[r.Alert] {
				t.Errorf("%s: defined twice", what)
			}
			seen[r.Alert] = true
			for _, f := range checkQuery(t, what, r.Expr.String()) {
				used[f] = true
			}
			if r.For != nil {
				if _, err := model.ParseDuration(string(*r.For)); err != nil {
					t.Errorf("%s: for %q: %v", what, *r.For, err)
				}
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", what, s)
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s annotation", what, a)
				}
			}
			for k, v := range r.Annotations {
				defs := "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"
				if _, err := template.New(k).Funcs(prometheusTemplateFuncs).Parse(defs + v); err != nil {
					t.Errorf("%s: annotation %s: %v", what, k, err)
				}
			}
			if strings.Contains(r.Expr.String(), "etcd_defrag_agent_") && !strings.Contains(r.Expr.String(), `job="`+agentJob+`"`) {
				t.Errorf("%s: selects agent metrics without job=%q", what, agentJob)
			}
		}
	}
	// What the issue asks alerts for, by the metric that carries it.
	for _, want := range []struct{ what, metric string }{
		{"defrags failing", "etcd_defrag_agent_defragmentations_total"},
		{"no successful defrag while fragmented", "etcd_defrag_agent_last_success_timestamp_seconds"},
		{"close to the quota", "etcd_defrag_agent_db_quota_bytes"},
		{"NOSPACE", "etcd_defrag_agent_alarm_active"},
		{"agent down", "up"},
		{"lock waits growing", "etcd_defrag_agent_lock_wait_seconds"},
	} {
		if !used[want.metric] {
			t.Errorf("no alert on %s (%s)", want.what, want.metric)
		}
	}
}

// grafanaVariables are Grafana's interval variables, which are not PromQL;
// the tests put a duration in their place before parsing.
var grafanaVariables = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)\}?`)

func TestGrafanaDashboard(t *testing.T) {
	b := readFile(t, "manifests/monitoring/grafana-dashboard.json")
	var dash struct {
		UID           string            `json:"uid"`
		Title         string            `json:"title"`
		SchemaVersion int               `json:"schemaVersion"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || dash.SchemaVersion == 0 || len(dash.Panels) == 0 {
		t.Fatalf("grafana-dashboard.json: uid %q, title %q, schemaVersion %d, %d panels", dash.UID, dash.Title, dash.SchemaVersion, len(dash.Panels))
	}

	type panel struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		GridPos *struct{ X, Y, W, H int } `json:"gridPos"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Errorf("panel: %v", err)
				continue
			}
			what := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if ids[p.ID] {
				t.Errorf("%s: id used twice", what)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
				t.Errorf("%s: no gridPos", what)
			}
			if p.Type != "row" {
				if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
					t.Errorf("%s: datasource is not the ${datasource} variable", what)
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: no queries", what)
				}
			}
			for _, tg := range p.Targets {
				expr := grafanaVariables.ReplaceAllString(tg.Expr, "5m")
				for _, f := range checkQuery(t, what+" query "+tg.RefID, expr) {
					used[f] = true
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)

	labelValues := regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		qs, _ := q["query"].(string)
		m := labelValues.FindStringSubmatch(qs)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, qs)
			continue
		}
		checkQuery(t, "variable "+v.Name, m[1])
		if !slices.Contains(targetLabels, m[2]) {
			t.Errorf("variable %s: label %s is not a target label", v.Name, m[2])
		}
	}

	// The panels the issue asks for, by the metric that carries them.
	for _, want := range []struct{ what, metric string }{
		{"size", "etcd_defrag_agent_db_size_bytes"},
		{"in use", "etcd_defrag_agent_db_size_in_use_bytes"},
		{"quota line", "etcd_defrag_agent_db_quota_bytes"},
		{"defrag timeline", "etcd_defrag_agent_defrag_in_progress"},
		{"reclaimed bytes", "etcd_defrag_agent_reclaimed_bytes_total"},
		{"skips by reason", "etcd_defrag_agent_skips_total"},
		{"lock wait", "etcd_defrag_agent_lock_wait_seconds"},
	} {
		if !used[want.metric] {
			t.Errorf("no panel shows %s (%s)", want.what, want.metric)
		}
	}
}

// TestPodMonitor: the PodMonitor scrapes the port the sidecars expose, as the
// job the alerts and the dashboard select.
func TestPodMonitor(t *testing.T) {
	pm := find[monitoringv1.PodMonitor](t, decodeAll(t, "podmonitor.yaml", readFile(t, "manifests/monitoring/podmonitor.yaml")), "PodMonitor", "")
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port == nil || *ep.Port != metricsPortName {
		t.Errorf("endpoint port %q, want %q", ptrValue(ep.Port), metricsPortName)
	}
	job := ""
	for _, r := range ep.RelabelConfigs {
		if r.TargetLabel == "job" && r.Replacement != nil {
			job = *r.Replacement
		}
	}
	if job != agentJob {
		t.Errorf("the PodMonitor sets job %q, want %q (the alerts and the dashboard select it)", job, agentJob)
	}
	if !pm.Spec.NamespaceSelector.Any {
		t.Errorf("namespaceSelector.any is false: the sidecars run in kube-system, kamaji-system and the etcd's namespace")
	}
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
