//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// markerEnv is set in the environment of every process the harness starts,
// to "<test binary PID>/<owner>", so that a scan of /proc finds what a test
// left running (see orphans).
const markerEnv = "DEFRAG_E2E_OWNER"

// exitTimeout bounds the wait for a SIGKILLed process to be reaped.
const exitTimeout = 10 * time.Second

// process is one child process: etcd or an agent. It runs in its own
// process group (so that a kill reaches anything it forks) and gets SIGKILL
// when the test binary dies (Pdeathsig). Its stdout and stderr go to outPath,
// appended across restarts. Methods are safe for concurrent use.
type process struct {
	name    string
	path    string
	args    []string
	env     []string
	outPath string
	owner   string // the marker value
	netns   string // a network namespace to run in (ip netns exec, which execs in place: same PID); "" for the harness's

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current run has exited
	state    *os.ProcessState
	expected bool // the current run was ended (or is being ended) by the harness
	onExit   []func(p *process, state *os.ProcessState, expected bool)
}

// cleanEnv returns the environment for a child: this process's environment
// without the variables etcd and the agent read (ETCD_*, ETCDCTL_*), so a
// developer's shell cannot change a scenario, plus extra.
func cleanEnv(owner string, extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "ETCD") || k == markerEnv {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, markerEnv+"="+owner)
	return append(env, extra...)
}

// start starts a new run of the process. It fails if a run is alive.
func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s is running (pid %d)", p.name, p.cmd.Process.Pid)
	}
	if err := os.MkdirAll(filepath.Dir(p.outPath), 0o755); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	out, err := os.OpenFile(p.outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	defer func() { _ = out.Close() }() // the child has its own copy
	cmd := exec.Command(p.path, p.args...)
	if p.netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", p.netns, p.path}, p.args...)...)
	}
	cmd.Env = cleanEnv(p.owner, p.env)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.state, p.expected = cmd, done, nil, false
	go p.wait(cmd, done)
	return nil
}

// wait reaps one run and tells the exit hooks.
func (p *process) wait(cmd *exec.Cmd, done chan struct{}) {
	_ = cmd.Wait() // the state tells everything
	p.mu.Lock()
	p.state = cmd.ProcessState
	expected := p.expected
	hooks := p.onExit
	p.mu.Unlock()
	close(done)
	for _, h := range hooks {
		h(p, cmd.ProcessState, expected)
	}
}

// addExitHook registers fn to be called after every run exits, with whether
// the harness ended it.
func (p *process) addExitHook(fn func(p *process, state *os.ProcessState, expected bool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onExit = append(p.onExit, fn)
}

// pid returns the PID of the current run, 0 if it never started.
func (p *process) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// running reports whether the current run has not exited (it may be
// stopped).
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !isClosed(p.done)
}

// exited returns a channel closed when the current run exits; nil before the
// first start.
func (p *process) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// exitState returns the state of the last run once it has exited.
func (p *process) exitState() *os.ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// signal sends sig to the process group of the current run.
func (p *process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || isClosed(p.done) {
		return fmt.Errorf("signal %v to %s: not running", sig, p.name)
	}
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT:
		p.expected = true
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("signal %v to %s (pgid %d): %w", sig, p.name, p.cmd.Process.Pid, err)
	}
	return nil
}

// kill SIGKILLs the process group and waits until the run is reaped. A
// process that is not running is left alone.
func (p *process) kill() error {
	p.mu.Lock()
	done, cmd := p.done, p.cmd
	p.mu.Unlock()
	if cmd == nil || isClosed(done) {
		return nil
	}
	if err := p.signal(syscall.SIGKILL); err != nil && !isClosed(done) {
		return err
	}
	t := time.NewTimer(exitTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("%s (pid %d) not reaped %v after SIGKILL", p.name, cmd.Process.Pid, exitTimeout)
	}
}

// terminate sends SIGTERM and waits up to grace for the run to exit, then
// SIGKILLs it. It returns the exit state.
func (p *process) terminate(grace time.Duration) (*os.ProcessState, error) {
	done := p.exited()
	if done == nil {
		return nil, fmt.Errorf("%s never started", p.name)
	}
	if !isClosed(done) {
		if err := p.signal(syscall.SIGTERM); err != nil && !isClosed(done) {
			return nil, err
		}
		t := time.NewTimer(grace)
		select {
		case <-done:
		case <-t.C:
			if err := p.kill(); err != nil {
				t.Stop()
				return nil, err
			}
		}
		t.Stop()
	}
	return p.exitState(), nil
}

func isClosed(ch <-chan struct{}) bool {
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// orphans returns the PIDs of live processes whose marker starts with
// prefix: what the harness started and did not reap. It reads /proc, so it
// sees the processes of this user that it may read.
func orphans(prefix string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan /proc: %w", err)
	}
	needle := []byte(markerEnv + "=" + prefix)
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // gone, or not ours to read
		}
		for kv := range bytes.SplitSeq(env, []byte{0}) {
			if bytes.HasPrefix(kv, needle) && !isZombie(pid) {
				out = append(out, pid)
				break
			}
		}
	}
	return out, nil
}

// isZombie reports whether pid has exited and waits to be reaped by its
// parent (it holds no resources but its table entry).
func isZombie(pid int) bool {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return true // gone
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "State:"); ok {
			return strings.HasPrefix(strings.TrimSpace(v), "Z")
		}
	}
	return false
}

// killOrphans SIGKILLs every orphan with the marker prefix and returns what
// it found.
func killOrphans(prefix string) ([]int, error) {
	pids, err := orphans(prefix)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill orphan %d: %w", pid, err))
		}
	}
	return pids, errors.Join(errs...)
}

// tail returns up to the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
