package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// TestMain fails the package if goroutines outlive the tests: the demo starts
// a cluster, agents, a watch and a narrator that must all end.
func TestMain(m *testing.M) { etcdtest.Main(m) }

// TestRun runs the whole demo on a small data set, on which the default rule
// does not fire and the demo rule does: the round must pass its checks, the
// summary must have one row per member, and nothing may stay on disk.
func TestRun(t *testing.T) {
	etcdtest.SkipShort(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // os.MkdirTemp("", …) creates the demo's directory here
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"-keys", "3000", "-timeout", "30s", "-v"}, &stdout, &stderr)
	out := stdout.String()
	t.Logf("stdout:\n%s", out)
	if err != nil {
		t.Fatalf("run() = %v, want nil; stderr:\n%s", err, stderr.String())
	}

	for _, want := range []string{
		"The default rule does not fire on every member",
		"  rule: " + demoRule,
		"\nPASS: one member at a time, the leader last",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "FAIL") {
		t.Errorf("output has a FAIL")
	}

	// One summary row per member: name, role, start, duration, sizes.
	_, summary, ok := strings.Cut(out, "\nSummary")
	if !ok {
		t.Fatal("output has no summary")
	}
	summary, _, _ = strings.Cut(summary, "\n\n")
	row := regexp.MustCompile(`(?m)^  (m\d)\s+(leader|follower)\s+\+\d+ ms\s+\d+ ms\s+[\d.]+ MiB → [\d.]+ MiB\s+[\d.]+ MiB$`)
	rows := row.FindAllStringSubmatch(summary, -1)
	seen := map[string]int{}
	leaders := 0
	for _, r := range rows {
		seen[r[1]]++
		if r[2] == "leader" {
			leaders++
		}
	}
	for _, name := range []string{"m0", "m1", "m2"} {
		if seen[name] != 1 {
			t.Errorf("summary has %d rows for %s, want 1:\n%s", seen[name], name, summary)
		}
	}
	if len(rows) != 3 || leaders != 1 {
		t.Errorf("summary has %d rows and %d leaders, want 3 and 1:\n%s", len(rows), leaders, summary)
	}

	// The narrative tells the leader going last, from etcd's log lines.
	for _, want := range []string{"etcd   m", "defragmented in", "(leader) waits until the followers", "releases the lock"} {
		if !strings.Contains(out, want) {
			t.Errorf("narrative lacks %q", want)
		}
	}
	// -v passes the agents' own events to stderr, and only there.
	if got := stderr.String(); !strings.Contains(got, "msg=cycle") || !strings.Contains(got, "agent=m0") {
		t.Errorf("stderr lacks the agents' log events with -v:\n%s", got)
	}
	if strings.Contains(out, "msg=") {
		t.Errorf("stdout has raw log events")
	}

	// Nothing stays on disk.
	m := regexp.MustCompile(`data under (\S+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatal("output does not name the data directory")
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s = %v, want it gone", m[1], err)
	}
	if left, err := os.ReadDir(tmp); err != nil || len(left) > 0 {
		t.Errorf("TMPDIR holds %v (%v), want nothing", left, err)
	}
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"-h"}, 0, ""},
		{"too few members", []string{"-members", "2"}, 2, "-members 2: want 3 to 7"},
		{"too many members", []string{"-members", "8"}, 2, "-members 8: want 3 to 7"},
		{"no keys", []string{"-keys", "0"}, 2, "-keys 0"},
		{"value too big", []string{"-value-size", "1048576"}, 2, "-value-size 1048576"},
		{"garbage", []string{"-garbage", "1.5"}, 2, "-garbage 1.5"},
		{"timeout", []string{"-timeout", "0s"}, 2, "-timeout 0s"},
		{"argument", []string{"now"}, 2, `unexpected argument "now"`},
		{"unknown flag", []string{"-members=3", "-fast"}, 2, "flag provided but not defined: -fast"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(t.Context(), tt.args, io.Discard, &stderr)
			if code := exitCode(err, &stderr); code != tt.code {
				t.Errorf("exit code for %q = %d, want %d (err %v)", tt.args, code, tt.code, err)
			}
			if tt.want != "" && !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr for %q = %q, want it to contain %q", tt.args, stderr.String(), tt.want)
			}
			if tt.code == 0 && !errors.Is(err, flag.ErrHelp) {
				t.Errorf("err for %q = %v, want flag.ErrHelp", tt.args, err)
			}
		})
	}
}

func TestClauses(t *testing.T) {
	tests := []struct {
		src  string
		want []string
	}{
		{rule.Default, []string{"dbQuotaUsage > 0.8 && dbSizeFree > 0.1*dbQuota", "fragmentation > 0.5 && dbSizeFree > 100*1024*1024"}},
		{"fragmentation > 0.5", nil},
		{"(isLeader || members > 3) && fragmentation > 0.5", nil},
		{"isLeader || (fragmentation > 0.5) || dbSize > 1", []string{"isLeader", "fragmentation > 0.5", "dbSize > 1"}},
		{"(dbSize > 1) && (dbSizeFree > 1) || isLeader", []string{"(dbSize > 1) && (dbSizeFree > 1)", "isLeader"}},
	}
	for _, tt := range tests {
		var got []string
		for _, r := range clauses(tt.src) {
			got = append(got, r.String())
		}
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("clauses(%q) = %q, want %q", tt.src, got, tt.want)
		}
	}
}
