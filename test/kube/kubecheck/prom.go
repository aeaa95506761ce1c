package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// promQuery runs a Prometheus HTTP API query: instant at time at (zero: now),
// or over [start, end] with step when start is set. It returns the number
// of series.
func promQuery(base, q string, start, end time.Time, step time.Duration) (int, error) {
	v := url.Values{"query": {q}}
	path := "/api/v1/query"
	if !start.IsZero() {
		path = "/api/v1/query_range"
		v.Set("start", fmt.Sprint(start.Unix()))
		v.Set("end", fmt.Sprint(end.Unix()))
		v.Set("step", fmt.Sprint(int(step.Seconds())))
	}
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.PostForm(strings.TrimRight(base, "/")+path, v)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("%s: %w: %.200s", path, err, b)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s %q: %s", path, q, r.Error)
	}
	return len(r.Data.Result), nil
}

// cmdProm prints the number of series a query returns now; with --min it
// fails below that many, with --max above.
func cmdProm(args []string) error {
	fs := flag.NewFlagSet("prom", flag.ContinueOnError)
	base := fs.String("url", "", "Prometheus base URL")
	minN := fs.Int("min", -1, "at least this many series")
	maxN := fs.Int("max", -1, "at most this many series")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("want one query")
	}
	n, err := promQuery(*base, fs.Arg(0), time.Time{}, time.Time{}, 0)
	if err != nil {
		return err
	}
	fmt.Println(n)
	if *minN >= 0 && n < *minN {
		return fmt.Errorf("%s: %d series, want at least %d", fs.Arg(0), n, *minN)
	}
	if *maxN >= 0 && n > *maxN {
		return fmt.Errorf("%s: %d series, want at most %d", fs.Arg(0), n, *maxN)
	}
	return nil
}

// cmdDashboard runs every panel query of a Grafana dashboard over the last
// --range, as Grafana would (the template variables set to All, the rate
// interval four scrape intervals), and fails for a panel none of whose
// queries returns a series. Queries that return nothing are listed.
func cmdDashboard(args []string) error {
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	base := fs.String("url", "", "Prometheus base URL")
	rng := fs.Duration("range", 30*time.Minute, "time range of the dashboard")
	scrape := fs.Duration("scrape-interval", 30*time.Second, "scrape interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return err
	}
	end := time.Now()
	start := end.Add(-*rng)
	step := 15 * time.Second
	rate := fmt.Sprintf("%ds", int(4**scrape/time.Second))
	vars := regexp.MustCompile(`\$(namespace|pod)\b`)
	var problems []string
	panels := 0
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			continue // a row
		}
		panels++
		total := 0
		for _, t := range p.Targets {
			q := strings.ReplaceAll(t.Expr, "$__rate_interval", rate)
			q = vars.ReplaceAllString(q, ".*") // All
			n, err := promQuery(*base, q, start, end, step)
			if err != nil {
				return fmt.Errorf("panel %q: %w", p.Title, err)
			}
			fmt.Printf("%3d series  %s | %s\n", n, p.Title, t.Expr)
			total += n
		}
		if total == 0 {
			problems = append(problems, fmt.Sprintf("panel %q: no query returns a series", p.Title))
		}
	}
	fmt.Printf("%d panels\n", panels)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// cmdPodMonitor prints the Prometheus scrape configuration that the
// Prometheus Operator generates for a PodMonitor's endpoints (its pod
// selector by labels, the container port by name, path, interval, and the
// PodMonitor's own relabelings after the operator's), with the given
// kubernetes_sd kubeconfig. --job-port adds a job for another port of the
// same pods (etcd's own metrics), named by --job-name.
func cmdPodMonitor(args []string) error {
	fs := flag.NewFlagSet("podmonitor", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for kubernetes_sd")
	namespace := fs.String("namespace", "monitoring", "the PodMonitor's namespace")
	extraPort := fs.String("job-port", "", "also scrape this port of the same pods")
	extraJob := fs.String("job-name", "etcd", "job label of --job-port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var pm struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			PodMetricsEndpoints []struct {
				Port        string `json:"port"`
				Path        string `json:"path"`
				Interval    string `json:"interval"`
				Relabelings []struct {
					Action       string   `json:"action"`
					SourceLabels []string `json:"sourceLabels"`
					TargetLabel  string   `json:"targetLabel"`
					Replacement  *string  `json:"replacement"`
					Regex        string   `json:"regex"`
				} `json:"relabelings"`
			} `json:"podMetricsEndpoints"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(b, &pm); err != nil {
		// Only the fields read here; the manifests' tests decode it fully.
		if err := yaml.Unmarshal(b, &pm); err != nil {
			return err
		}
	}
	sanitize := regexp.MustCompile(`[^a-zA-Z0-9_]`)
	var jobs []map[string]any
	for i, ep := range pm.Spec.PodMetricsEndpoints {
		rl := []map[string]any{
			{"source_labels": []string{"__meta_kubernetes_pod_phase"}, "regex": "(Failed|Succeeded)", "action": "drop"},
		}
		for k, v := range pm.Spec.Selector.MatchLabels {
			l := sanitize.ReplaceAllString(k, "_")
			rl = append(rl, map[string]any{"action": "keep",
				"source_labels": []string{"__meta_kubernetes_pod_label_" + l, "__meta_kubernetes_pod_labelpresent_" + l},
				"regex":         "(" + v + ");true"})
		}
		common := []map[string]any{
			{"source_labels": []string{"__meta_kubernetes_namespace"}, "target_label": "namespace"},
			{"source_labels": []string{"__meta_kubernetes_pod_container_name"}, "target_label": "container"},
			{"source_labels": []string{"__meta_kubernetes_pod_name"}, "target_label": "pod"},
		}
		job := func(name, port string, own []map[string]any, interval, path string) map[string]any {
			r := append(append([]map[string]any{}, rl...),
				map[string]any{"action": "keep", "source_labels": []string{"__meta_kubernetes_pod_container_port_name"}, "regex": port})
			r = append(r, common...)
			r = append(r, map[string]any{"target_label": "job", "replacement": *namespace + "/" + pm.Metadata.Name},
				map[string]any{"target_label": "endpoint", "replacement": port})
			r = append(r, own...)
			sd := map[string]any{"role": "pod"}
			if *kubeconfig != "" {
				sd["kubeconfig_file"] = *kubeconfig
			}
			return map[string]any{
				"job_name": name, "honor_labels": false, "scrape_interval": interval, "metrics_path": path,
				"kubernetes_sd_configs": []any{sd}, "relabel_configs": r,
			}
		}
		var own []map[string]any
		for _, r := range ep.Relabelings {
			m := map[string]any{"action": strings.ToLower(r.Action)}
			if len(r.SourceLabels) > 0 {
				m["source_labels"] = r.SourceLabels
			}
			if r.TargetLabel != "" {
				m["target_label"] = r.TargetLabel
			}
			if r.Replacement != nil {
				m["replacement"] = *r.Replacement
			}
			if r.Regex != "" {
				m["regex"] = r.Regex
			}
			own = append(own, m)
		}
		interval := ep.Interval
		if interval == "" {
			interval = "30s"
		}
		path := ep.Path
		if path == "" {
			path = "/metrics"
		}
		jobs = append(jobs, job(fmt.Sprintf("podMonitor/%s/%s/%d", *namespace, pm.Metadata.Name, i), ep.Port, own, interval, path))
		if *extraPort != "" {
			setJob := []map[string]any{{"target_label": "job", "replacement": *extraJob}}
			jobs = append(jobs, job(*extraJob, *extraPort, setJob, interval, "/metrics"))
		}
	}
	out, err := yaml.Marshal(map[string]any{"scrape_configs": jobs})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

// cmdRuleFile prints the spec of a PrometheusRule as a Prometheus rule file.
func cmdRuleFile(args []string) error {
	if len(args) != 1 {
		return errors.New("want the PrometheusRule file")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var crd struct {
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &crd); err != nil {
		return err
	}
	out, err := yaml.Marshal(crd.Spec)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
