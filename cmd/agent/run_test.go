package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

const prefix = "/agent-e2e/"

// runArgs runs the program as main would, and returns its exit code and
// output.
func runArgs(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), args, env, &out, &errOut)
	code = exitCode(err, &errOut)
	return code, out.String(), errOut.String()
}

// writeFile writes content to a new file in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersionAndHelp(t *testing.T) {
	code, out, _ := runArgs(t, nil, "--version")
	if code != 0 || !strings.HasPrefix(out, "etcd-defrag-agent ") {
		t.Errorf("--version: code %d, output %q", code, out)
	}
	code, out, _ = runArgs(t, nil, "--help")
	if code != 0 || !strings.Contains(out, "--defrag-rule") || !strings.Contains(out, "--web.listen-address") {
		t.Errorf("--help: code %d, output %q", code, out)
	}
}

// TestBadInvocations: every bad input exits 2 with a message that names it,
// and nothing is written to etcd.
func TestBadInvocations(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	ep := c.Members()[0].ClientURL
	dir := t.TempDir()
	garbage := writeFile(t, dir, "garbage.pem", "not a certificate\n")
	keyOnly := writeFile(t, dir, "cfg-unknown.yml", "endpoints: ["+ep+"]\ndefrag-rulez: true\n")
	badYAML := writeFile(t, dir, "cfg-bad.yml", "endpoints: [\n")
	pwFile := writeFile(t, dir, "pw", "secret\n")
	base := []string{"--endpoints", ep, "--lock-prefix", prefix, "--once", "--web.listen-address", ""}

	cases := []struct {
		name string
		env  []string
		args []string
		want string // a part of the message naming the input
	}{
		{"unknown flag", nil, []string{"--defrag-rulez", "true"}, "unknown flag: --defrag-rulez"},
		{"positional argument", nil, []string{"defrag"}, `unexpected argument "defrag"`},
		{"rule syntax", nil, []string{"--defrag-rule", "dbSize >"}, "flag --defrag-rule"},
		{"rule unknown variable", nil, []string{"--defrag-rule", "dbsize > 1"}, "unknown name dbsize"},
		{"rule not boolean", nil, []string{"--defrag-rule", "dbSize + 1"}, "expected bool"},
		{"rule empty", nil, []string{"--defrag-rule", ""}, "flag --defrag-rule"},
		{"bad duration", nil, []string{"--cooldown", "ten"}, "--cooldown"},
		{"lock ttl too short", nil, []string{"--lock-ttl", "2s"}, "flag --lock-ttl: must be at least 5s"},
		{"lock ttl fractional", nil, []string{"--lock-ttl", "5500ms"}, "flag --lock-ttl"},
		{"threshold above 1", nil, []string{"--disalarm-threshold", "1.5"}, "flag --disalarm-threshold"},
		{"quota zero", nil, []string{"--etcd-storage-quota-bytes", "0"}, "flag --etcd-storage-quota-bytes"},
		{"bad cron", nil, []string{"--schedule", "every minute"}, "flag --schedule"},
		{"every zero", nil, []string{"--schedule", "@every 0s"}, "flag --schedule"},
		{"endpoint without port", nil, []string{"--endpoints", "localhost"}, "flag --endpoints"},
		{"endpoint bad scheme", nil, []string{"--endpoints", "ftp://localhost:2379"}, "flag --endpoints"},
		{"missing cacert", nil, []string{"--cacert", filepath.Join(dir, "nope.pem")}, "flag --cacert"},
		{"cert without key", nil, []string{"--cert", garbage}, "flag --cert: set without key"},
		{"garbage cert and key", nil, []string{"--cert", garbage, "--key", garbage}, "--cert " + garbage},
		{"log level", nil, []string{"--log.level", "verbose"}, "flag --log.level"},
		{"log format", nil, []string{"--log.format", "xml"}, "flag --log.format"},
		{"listen address", nil, []string{"--web.listen-address", "nohostport"}, "flag --web.listen-address"},
		{"password twice", []string{"ETCD_DEFRAG_PASSWORD=x"}, []string{"--user", "root:y"}, "password"},
		{"password file missing", nil, []string{"--user", "root", "--password-file", filepath.Join(dir, "nope")}, "flag --password-file"},
		{"unknown env", []string{"ETCD_DEFRAG_COOLDOWNN=1m"}, nil, "env ETCD_DEFRAG_COOLDOWNN"},
		{"env wrong type", []string{"ETCD_DEFRAG_DRY_RUN=maybe"}, nil, "env ETCD_DEFRAG_DRY_RUN"},
		{"config file missing", nil, []string{"--config", filepath.Join(dir, "nope.yml")}, "nope.yml"},
		{"config unknown key", nil, []string{"--config", keyOnly}, `"defrag-rulez"`},
		{"config malformed", nil, []string{"--config", badYAML}, "cfg-bad.yml"},
		{"web config missing", nil, []string{"--web.config.file", filepath.Join(dir, "web.yml")}, "flag --web.config.file"},
		{"password file as cert", nil, []string{"--cacert", pwFile}, "--cacert"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{}, base...), tc.args...)
			code, _, stderr := runArgs(t, tc.env, args...)
			if code != 2 {
				t.Errorf("exit code %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not name the input (%q):\n%s", tc.want, stderr)
			}
		})
	}
	resp, err := c.ClientT(t).Get(t.Context(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("bad invocations wrote %d keys to etcd", resp.Count)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("bad invocations defragmented: %v", ds)
	}
}

// TestCheckConfig validates and exits without contacting etcd.
func TestCheckConfig(t *testing.T) {
	code, out, stderr := runArgs(t, nil, "--check-config", "--endpoints", "127.0.0.1:1", "--defrag-rule", "dbQuotaUsage > 0.5")
	if code != 0 || !strings.Contains(out, "valid") {
		t.Errorf("code %d, stdout %q, stderr %q", code, out, stderr)
	}
	code, _, stderr = runArgs(t, nil, "--check-config", "--defrag-rule", "nope")
	if code != 2 || !strings.Contains(stderr, "--defrag-rule") {
		t.Errorf("code %d, stderr %q", code, stderr)
	}
}

// TestOnceTLS: --once against members that require client certificates,
// with the etcdctl flags --cacert, --cert, --key.
func TestOnceTLS(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{TLS: true, UnsafeNoFsync: true})
	cacert, cert, key := c.TLSFiles()
	m := c.Members()[1]
	code, _, stderr := runArgs(t, nil, "--once", "--endpoints", m.ClientURL,
		"--cacert", cacert, "--cert", cert, "--key", key, "--defrag-rule", "true",
		"--lock-prefix", prefix, "--web.listen-address", "", "--leader-wait-timeout", "10s", "--lock-ttl", "5s")
	if code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, stderr)
	}
	if ds := c.Defrags(); len(ds) != 1 || ds[0].MemberID != m.ID {
		t.Errorf("defrags %v, want one of %s", ds, m.Name)
	}
}

// TestOnceAuth: a user without the root role exits 1 and says so; root,
// with its password from the environment, defragments.
func TestOnceAuth(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{Auth: true, UnsafeNoFsync: true})
	m := c.Members()[0]
	pw := writeFile(t, t.TempDir(), "alice-password", etcdtest.AlicePassword+"\n")
	args := []string{"--once", "--endpoints", m.ClientURL, "--defrag-rule", "true", "--lock-prefix", prefix,
		"--web.listen-address", "", "--leader-wait-timeout", "10s", "--lock-ttl", "5s"}

	code, _, stderr := runArgs(t, nil, append(args, "--user", etcdtest.AliceUser, "--password-file", pw)...)
	if code != 1 || !strings.Contains(stderr, "root role") || !strings.Contains(stderr, `"alice"`) {
		t.Errorf("alice: exit code %d, want 1 naming the root role; stderr:\n%s", code, stderr)
	}
	if strings.Contains(stderr, etcdtest.AlicePassword) {
		t.Errorf("the password appears in the output")
	}
	code, _, stderr = runArgs(t, []string{"ETCD_DEFRAG_PASSWORD=" + etcdtest.RootPassword}, append(args, "--user", etcdtest.RootUser)...)
	if code != 0 {
		t.Errorf("root: exit code %d; stderr:\n%s", code, stderr)
	}
	if strings.Contains(stderr, etcdtest.RootPassword) {
		t.Errorf("the password appears in the output")
	}
	if ds := c.Defrags(); len(ds) != 1 {
		t.Errorf("defrags %v, want 1", ds)
	}
}

// TestDaemonHTTP runs the daemon and reads its endpoints; SIGTERM (the
// context) stops it cleanly.
func TestDaemonHTTP(t *testing.T) {
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	m := c.Members()[0]
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		err := run(ctx, []string{"--endpoints", m.ClientURL, "--lock-prefix", prefix, "--web.listen-address", addr,
			"--schedule", "@every 1h", "--defrag-rule", "false"}, nil, io.Discard, &stderr)
		done <- exitCode(err, &stderr)
	}()
	base := "http://" + addr
	var status struct {
		MemberID  string `json:"member_id"`
		LastCycle *struct {
			Decision string `json:"decision"`
			Reason   string `json:"reason"`
		} `json:"last_cycle"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, code := get(t, base+"/status")
		if code == http.StatusOK {
			if err := json.Unmarshal([]byte(body), &status); err != nil {
				t.Fatalf("/status is not JSON: %v\n%s", err, body)
			}
			if status.LastCycle != nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cycle reported on /status within 30s; stderr:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if status.LastCycle.Reason != "rule_false" || status.MemberID != fmt.Sprintf("%x", m.ID) {
		t.Errorf("/status = %+v, want member %x and reason rule_false", status, m.ID)
	}
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ok",
		"/metrics": `etcd_defrag_agent_skips_total{reason="rule_false"} 1`,
	} {
		body, code := get(t, base+path)
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d, want 200 containing %q; body:\n%.500s", path, code, want, body)
		}
	}
	if body, _ := get(t, base+"/metrics"); !strings.Contains(body, "etcd_defrag_agent_build_info{") || !strings.Contains(body, "process_resident_memory_bytes") {
		t.Errorf("/metrics lacks build_info or process metrics")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit code after SIGTERM %d; stderr:\n%s", code, stderr.String())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return err.Error(), 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode
}

// TestOnceUnreachable: with --once, a member that cannot be reached at all is
// a bad invocation (exit 2, naming --endpoints); the daemon keeps trying.
func TestOnceUnreachable(t *testing.T) {
	addr := freeAddr(t) // nothing listens there
	code, _, stderr := runArgs(t, nil, "--once", "--endpoints", addr, "--dial-timeout", "200ms", "--command-timeout", "1s", "--web.listen-address", "")
	if code != 2 || !strings.Contains(stderr, "--endpoints "+addr) {
		t.Errorf("exit code %d, want 2 naming --endpoints; stderr:\n%s", code, stderr)
	}
}
