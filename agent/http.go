package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the agent's HTTP endpoints:
//
//	/metrics  the agent's metrics, from gatherer
//	/healthz  200 while the process and its scheduler are alive; never tied to
//	          etcd's health, so the kubelet does not restart the sidecar for an
//	          etcd problem
//	/readyz   200 when the local member answers a Status request
//	/status   JSON: the last cycle's report
func (a *Agent) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.serveHealthz)
	mux.HandleFunc("GET /readyz", a.serveReadyz)
	mux.HandleFunc("GET /status", a.serveStatus)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<html><head><title>etcd-defrag-agent</title></head><body><h1>etcd-defrag-agent</h1>
<ul><li><a href="metrics">metrics</a></li><li><a href="status">status</a></li><li><a href="healthz">healthz</a></li><li><a href="readyz">readyz</a></li></ul></body></html>`)
	})
	return mux
}

func (a *Agent) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	health := a.health
	a.mu.Unlock()
	if health != nil {
		if err := health(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, "ok")
}

func (a *Agent) serveReadyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.CommandTimeout)
	defer cancel()
	var errs []error
	for _, ep := range a.local.Endpoints() {
		if _, err := a.local.Status(ctx, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(w, "ok")
		return
	}
	http.Error(w, fmt.Sprintf("local member does not answer: %v", errs), http.StatusServiceUnavailable)
}

// statusPage is the JSON of /status.
type statusPage struct {
	Version  string    `json:"version"`
	Agent    string    `json:"agent,omitempty"`
	MemberID string    `json:"member_id,omitempty"`
	Rule     string    `json:"rule"`
	DryRun   bool      `json:"dry_run"`
	Time     time.Time `json:"time"`
	Last     *Report   `json:"last_cycle,omitempty"`
}

func (a *Agent) serveStatus(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	page := statusPage{
		Version: a.cfg.Version, Agent: a.cfg.Identity, Rule: a.cfg.Rule.String(),
		DryRun: a.cfg.DryRun, Time: a.now(),
	}
	if a.memberID != 0 {
		page.MemberID = fmt.Sprintf("%x", a.memberID)
	}
	if !a.last.Start.IsZero() {
		last := a.last
		page.Last = &last
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(page)
}
