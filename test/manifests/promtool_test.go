package manifests

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// promtoolVersion is the Prometheus release whose promtool runs the alert
// unit tests (the release make kube-e2e runs as the server, too).
const promtoolVersion = "v0.316.0"

// promtool returns the path of promtool: $PROMTOOL, or the one built from
// github.com/prometheus/prometheus at promtoolVersion into the user's cache
// ($XDG_CACHE_HOME/etcd-defrag-agent/prometheus/<version>/, shared with
// make kube-e2e), building it there on first use with go install (a few
// minutes, once per machine). Nothing is added to this module's go.mod.
func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PROMTOOL"); p != "" {
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("no cache directory for promtool (set PROMTOOL): %v", err)
	}
	dir := filepath.Join(cache, "etcd-defrag-agent", "prometheus", promtoolVersion)
	bin := filepath.Join(dir, "promtool")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// One builder at a time (test/kube/build.sh takes the same lock).
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", "-trimpath", "-ldflags=-s -w",
		"github.com/prometheus/prometheus/cmd/promtool@"+promtoolVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOWORK=off", "GOFLAGS=", "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install promtool@%s (needs the Go module proxy): %v\n%s", promtoolVersion, err, out)
	}
	t.Logf("built promtool %s in %v", promtoolVersion, time.Since(start).Round(time.Second))
	return bin
}

// TestPromtoolRules runs the unit tests of monitoring/prometheusrule.test.yaml
// with promtool against the rules of the shipped PrometheusRule, and checks
// that every alert of the rule fires in at least one of them.
func TestPromtoolRules(t *testing.T) {
	var crd struct {
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, "manifests/monitoring/prometheusrule.yaml"), &crd); err != nil {
		t.Fatal(err)
	}
	rules, err := yaml.Marshal(crd.Spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tests := readFile(t, "manifests/monitoring/prometheusrule.test.yaml")
	for name, b := range map[string][]byte{"prometheusrule.rules.yaml": rules, "prometheusrule.test.yaml": tests} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "prometheusrule.rules.yaml"},
		{"test", "rules", "prometheusrule.test.yaml"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			continue
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), bytes.TrimSpace(out))
	}

	// Every alert has a test in which it fires.
	var ruleFile struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(rules, &ruleFile); err != nil {
		t.Fatal(err)
	}
	var testFile struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &testFile); err != nil {
		t.Fatal(err)
	}
	var fires, quiet []string
	for _, tc := range testFile.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires = append(fires, a.Alertname)
			} else {
				quiet = append(quiet, a.Alertname)
			}
		}
	}
	n := 0
	for _, g := range ruleFile.Groups {
		for _, r := range g.Rules {
			n++
			if !slices.Contains(fires, r.Alert) {
				t.Errorf("alert %s: no unit test in which it fires", r.Alert)
			}
			if !slices.Contains(quiet, r.Alert) {
				t.Errorf("alert %s: no unit test in which it stays quiet", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alerts in prometheusrule.yaml")
	}
}
