//go:build linux

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// AgentOptions configures one agent process.
type AgentOptions struct {
	// Args are the agent's flags, for example "--schedule=@every 1h" or
	// "--defrag-rule=true". The harness adds, unless Args set them:
	// --endpoints (the member's client URL), --lock-prefix (the cluster's),
	// --lock-ttl=5s, --web.listen-address (a free loopback port),
	// --log.format=json, --log.level=debug and, on etcd < 3.6 with
	// ClusterOptions.QuotaBackendBytes, --etcd-storage-quota-bytes.
	Args []string
	// Env is added to the agent's environment (ETCD_DEFRAG_* variables).
	// The harness removes every ETCD* variable of its own environment.
	Env []string
	// ExitExpected says the agent is meant to exit by itself (a bad
	// invocation that exits 2); without it, only agents run with --once,
	// --check-config or --version may exit without failing the test.
	ExitExpected bool
}

// Agent is one etcd-defrag-agent process beside one member.
type Agent struct {
	// Member is the member the agent runs beside.
	Member *Member
	// WebAddr is the host:port of the agent's HTTP endpoints ("" when Args
	// set --web.listen-address themselves).
	WebAddr string
	// LogPath receives the agent's stdout and stderr (its log), appended
	// across restarts.
	LogPath string

	c      *Cluster
	proc   *process
	exitOK bool // runs --once or is meant to exit by itself
}

// StartAgent starts an agent beside member m and returns once its process
// has started (not once it has run a cycle: see WaitReady). The cluster's
// cleanup kills it. An agent that exits by itself fails the test at
// cleanup, unless it runs with --once, --check-config or --version or
// opts.ExitExpected is set.
func (c *Cluster) StartAgent(t testing.TB, m *Member, opts AgentOptions) *Agent {
	t.Helper()
	bin := AgentBinary(t)
	c.mu.Lock()
	n := len(c.agents)
	c.mu.Unlock()
	name := fmt.Sprintf("agent%d-%s", n, m.Name)
	a := &Agent{Member: m, LogPath: filepath.Join(c.dir, name+".log"), c: c}
	args := opts.Args
	has := func(flag string) bool {
		for _, s := range args {
			if s == "--"+flag || strings.HasPrefix(s, "--"+flag+"=") {
				return true
			}
		}
		return false
	}
	var defaults []string
	add := func(flag, value string) {
		if !has(flag) {
			defaults = append(defaults, "--"+flag+"="+value)
		}
	}
	add("endpoints", m.ClientURL)
	add("lock-prefix", c.LockPrefix)
	add("lock-ttl", "5s")
	if !has("web.listen-address") {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		a.WebAddr = fmt.Sprintf("%s:%d", m.host, port)
		defaults = append(defaults, "--web.listen-address="+a.WebAddr)
	}
	add("log.format", "json")
	add("log.level", "debug")
	if c.opts.QuotaBackendBytes > 0 && (c.Etcd.Line == "3.4" || c.Etcd.Line == "3.5") {
		add("etcd-storage-quota-bytes", strconv.FormatInt(c.opts.QuotaBackendBytes, 10))
	}
	a.exitOK = opts.ExitExpected || has("once") || has("check-config") || has("version")
	a.proc = &process{
		name: name, path: bin, args: append(defaults, args...), env: opts.Env,
		outPath: a.LogPath, owner: c.owner + name, netns: m.netns,
	}
	a.proc.addExitHook(func(_ *process, state *os.ProcessState, expected bool) {
		if !expected && !a.exitOK {
			c.problem(fmt.Sprintf("agent of %s exited unexpectedly (%v); last lines of %s:\n%s", m.Name, state, a.LogPath, tail(a.LogPath, 10)))
		}
	})
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		t.Fatal("start agent: the cluster is closed")
	}
	c.agents = append(c.agents, a)
	c.mu.Unlock()
	if err := a.proc.start(); err != nil {
		t.Fatal(err)
	}
	return a
}

// StartAgents starts one agent beside every member, with the same options,
// one right after the other.
func (c *Cluster) StartAgents(t testing.TB, opts AgentOptions) []*Agent {
	t.Helper()
	var out []*Agent
	for _, m := range c.members {
		out = append(out, c.StartAgent(t, m, opts))
	}
	return out
}

// Agents returns every agent started in the cluster, in start order.
func (c *Cluster) Agents() []*Agent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Agent(nil), c.agents...)
}

// PID returns the PID of the agent's current (or last) process.
func (a *Agent) PID() int { return a.proc.pid() }

// Running reports whether the agent's process is alive (it may be stopped).
func (a *Agent) Running() bool { return a.proc.running() }

// Kill SIGKILLs the agent and waits until it is reaped: no cleanup, its
// session lease expires on its own.
func (a *Agent) Kill() error { return a.proc.kill() }

// Stop freezes the agent with SIGSTOP.
func (a *Agent) Stop() error { return a.proc.signal(syscall.SIGSTOP) }

// Cont resumes a stopped agent with SIGCONT.
func (a *Agent) Cont() error { return a.proc.signal(syscall.SIGCONT) }

// Terminate sends SIGTERM (a graceful stop), waits up to grace for the exit
// and then SIGKILLs. It returns the exit code (-1 when killed by a signal).
func (a *Agent) Terminate(grace time.Duration) (int, error) {
	st, err := a.proc.terminate(grace)
	if err != nil {
		return 0, err
	}
	return st.ExitCode(), nil
}

// Restart starts the agent again with the same flags and port, after it
// exited or was killed.
func (a *Agent) Restart() error { return a.proc.start() }

// Wait waits until the agent exits (an agent run with --once) and returns
// its exit code (-1 when killed by a signal). ctx bounds the wait.
func (a *Agent) Wait(ctx context.Context) (int, error) {
	done := a.proc.exited()
	if done == nil {
		return 0, fmt.Errorf("agent of %s never started", a.Member.Name)
	}
	select {
	case <-done:
		return a.proc.exitState().ExitCode(), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for the agent of %s to exit: %w", a.Member.Name, context.Cause(ctx))
	}
}

// get fetches one of the agent's HTTP endpoints.
func (a *Agent) get(ctx context.Context, path string) (int, string, error) {
	if a.WebAddr == "" {
		return 0, "", fmt.Errorf("agent of %s: no known web address", a.Member.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.WebAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// WaitReady waits until the agent's /healthz answers 200 (its scheduler
// runs). ctx bounds the wait.
func (a *Agent) WaitReady(ctx context.Context) error {
	for {
		code, _, err := a.get(ctx, "/healthz")
		if err == nil && code == http.StatusOK {
			return nil
		}
		if !a.proc.running() {
			return fmt.Errorf("agent of %s exited: %v; last lines of its log:\n%s", a.Member.Name, a.proc.exitState(), tail(a.LogPath, 10))
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("wait for the agent of %s: %w", a.Member.Name, err)
		}
	}
}

// Status returns the body of the agent's /status (JSON).
func (a *Agent) Status(ctx context.Context) (string, error) {
	code, body, err := a.get(ctx, "/status")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("agent of %s: /status answered %d", a.Member.Name, code)
	}
	return body, err
}

// Metrics returns the agent's metric samples by their full name with
// labels, as exposed: `etcd_defrag_agent_skips_total{reason="cooldown"}`.
func (a *Agent) Metrics(ctx context.Context) (map[string]float64, error) {
	code, body, err := a.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("agent of %s: /metrics answered %d", a.Member.Name, code)
	}
	return parseMetrics(body), nil
}

// parseMetrics reads the samples of the Prometheus text format.
func parseMetrics(body string) map[string]float64 {
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}
