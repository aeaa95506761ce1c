package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// criLine is one line of a container log in the kubelet's CRI format, with
// etcd's JSON entry.
func criLine(ts, msg string) string {
	return ts + ` stderr F {"level":"info","ts":"` + ts + `","msg":"` + msg + `"}` + "\n"
}

func writeLog(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReadDefrags: a defrag left unfinished by a container instance that a
// later one replaced ended when that instance stopped (its last entry); one
// unfinished in the newest instance is still running; the later member's
// defrag, after the restart, does not overlap the interrupted one.
func TestReadDefrags(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeLog(t, filepath.Join(a, "0.log"),
		criLine("2026-12-05T10:00:00Z", "starting an etcd server"),
		criLine("2026-12-05T10:00:10Z", "defragmenting"),
		criLine("2026-12-05T10:00:11Z", "finished defragmenting directory"),
		criLine("2026-12-05T10:01:00Z", "defragmenting"),
		criLine("2026-12-05T10:01:05Z", "received signal; shutting down"))
	writeLog(t, filepath.Join(a, "1.log"),
		criLine("2026-12-05T10:02:00Z", "starting an etcd server"),
		criLine("2026-12-05T10:05:00Z", "defragmenting"))
	writeLog(t, filepath.Join(b, "0.log"),
		criLine("2026-12-05T10:01:30Z", "defragmenting"),
		criLine("2026-12-05T10:01:40Z", "failed to defragment"))
	ds, err := readDefrags([]memberLogs{{"a", a}, {"b", b}}, mustTime(t, "2026-12-05T10:00:30Z"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.String())
	}
	want := []string{
		"a(0) 10:01:00.000000..10:01:05.000000 (5s) err=the member stopped",
		"b(0) 10:01:30.000000..10:01:40.000000 (10s) err=failed",
		"a(0) 10:05:00.000000..running",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("readDefrags:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}
