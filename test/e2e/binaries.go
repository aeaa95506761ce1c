//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The etcd lines the suite runs on, oldest first, and the release of each
// that the harness builds from Go modules. 3.4 is not built: Debian's
// etcd-server package provides it (Debian 12 ships 3.4.23), because the 3.4
// server module predates etcd's module split and cannot be built the same way.
const (
	releaseV35 = "v3.5.35" // newest 3.5.x the module proxy served when pinned
	releaseV36 = "v3.6.16"
	releaseV37 = "v3.7.3" // newest 3.7.x the module proxy served when pinned
)

// Lines lists every etcd line the harness knows, oldest first.
func Lines() []string { return []string{"3.4", "3.5", "3.6", "3.7"} }

// release returns the Go module version built for a line, "" for 3.4.
func release(line string) (string, error) {
	switch line {
	case "3.4":
		return "", nil
	case "3.5":
		return releaseV35, nil
	case "3.6":
		return releaseV36, nil
	case "3.7":
		return releaseV37, nil
	}
	return "", fmt.Errorf("unknown etcd line %q (known: %s)", line, strings.Join(Lines(), ", "))
}

// Environment variables that configure the binaries.
const (
	// EnvVersions selects the etcd lines the version matrix runs on, comma
	// separated (default: every line of Lines). Main prepares exactly these.
	EnvVersions = "E2E_ETCD_VERSIONS"
	// EnvEtcd34 is the path of the etcd 3.4 binary (default /usr/bin/etcd,
	// from Debian's etcd-server package).
	EnvEtcd34 = "E2E_ETCD_3_4"
	// EnvCacheDir is the directory of the built etcd binaries (default
	// $XDG_CACHE_HOME/etcd-defrag-agent/etcd or ~/.cache/...).
	EnvCacheDir = "E2E_ETCD_CACHE"
)

// debianEtcd is where Debian's etcd-server package installs etcd.
const debianEtcd = "/usr/bin/etcd"

// Etcd is a runnable etcd release.
type Etcd struct {
	// Line is the minor line: "3.4" … "3.7".
	Line string
	// Version is the exact version the binary reports: "3.5.35".
	Version string
	// Server is the path of the etcd server binary.
	Server string
	// Ctl is the path of etcdctl of the same release, "" if there is none
	// (Debian's etcd-server package has none).
	Ctl string
}

// SelectedLines returns the lines EnvVersions selects, oldest first, or an
// error naming an unknown line.
func SelectedLines() ([]string, error) {
	v := strings.TrimSpace(os.Getenv(EnvVersions))
	if v == "" {
		return Lines(), nil
	}
	var out []string
	for l := range strings.SplitSeq(v, ",") {
		l = strings.TrimSpace(l)
		if _, err := release(l); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvVersions, err)
		}
		if !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return slices.Index(Lines(), a) - slices.Index(Lines(), b) })
	return out, nil
}

// FaultLines returns the etcd lines the fault scenarios outside the
// issue's version matrix (F2, F3, F6, F7, F8) run on: every selected line
// when EnvVersions is set (an explicit selection; make stress sets it),
// else only the newest line, which keeps CI within its time budget. Those
// scenarios test the agents' turn-taking, the same code on every line; the
// line-dependent parts are exercised on every line by the matrix (the
// round, F1, F5) and by make stress.
func FaultLines() ([]string, error) {
	lines, err := SelectedLines()
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(os.Getenv(EnvVersions)) == "" {
		return lines[len(lines)-1:], nil
	}
	return lines, nil
}

// binaryCache memoises the etcd binaries of this process: each line is
// looked up or built once, however many tests ask, and concurrent askers
// wait for the same build. Programs are a process-wide resource, like ports.
var binaryCache = struct {
	mu    sync.Mutex
	lines map[string]*etcdBuild
}{lines: make(map[string]*etcdBuild)}

type etcdBuild struct {
	done chan struct{}
	etcd Etcd
	err  error
	took time.Duration
	note string // "built", "cached", "installed"
}

// EtcdBinary returns the etcd of a line, building it on first use: 3.4 is
// looked up (EnvEtcd34, else /usr/bin/etcd), 3.5 to 3.7 are built from Go
// modules into the cache directory, once per release and machine (guarded
// by a file lock, so concurrent test binaries build each release once).
// ctx bounds the wait and the build. The error says how to fix a missing
// 3.4.
func EtcdBinary(ctx context.Context, line string) (Etcd, error) {
	if _, err := release(line); err != nil {
		return Etcd{}, err
	}
	binaryCache.mu.Lock()
	b, ok := binaryCache.lines[line]
	if !ok {
		b = &etcdBuild{done: make(chan struct{})}
		binaryCache.lines[line] = b
		go func() {
			// Not bound by ctx: other callers may be waiting for it.
			start := time.Now()
			b.etcd, b.note, b.err = resolveEtcd(context.WithoutCancel(ctx), line)
			b.took = time.Since(start)
			close(b.done)
		}()
	}
	binaryCache.mu.Unlock()
	select {
	case <-b.done:
		return b.etcd, b.err
	case <-ctx.Done():
		return Etcd{}, fmt.Errorf("wait for etcd %s: %w", line, context.Cause(ctx))
	}
}

// resolveEtcd finds or builds the etcd of a line.
func resolveEtcd(ctx context.Context, line string) (Etcd, string, error) {
	if line == "3.4" {
		path := os.Getenv(EnvEtcd34)
		if path == "" {
			path = debianEtcd
		}
		e, err := probeEtcd(ctx, line, path, "")
		if err != nil {
			return Etcd{}, "", fmt.Errorf("etcd 3.4: %w; install Debian's etcd-server package "+
				"(apt-get install -y etcd-server, which .ci/run does) or set %s to an etcd 3.4 binary", err, EnvEtcd34)
		}
		// Debian's etcd-client package puts etcdctl next to etcd.
		if ctl := filepath.Join(filepath.Dir(path), "etcdctl"); probeCtl(ctx, line, ctl) {
			e.Ctl = ctl
		}
		return e, "installed", nil
	}
	rel, _ := release(line)
	dir, err := cacheDir()
	if err != nil {
		return Etcd{}, "", err
	}
	return buildEtcd(ctx, line, rel, dir)
}

var versionRE = regexp.MustCompile(`etcd Version: (\S+)`)

// probeEtcd runs `etcd --version` and checks the line.
func probeEtcd(ctx context.Context, line, server, ctl string) (Etcd, error) {
	if _, err := os.Stat(server); err != nil {
		return Etcd{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, server, "--version").CombinedOutput()
	if err != nil {
		return Etcd{}, fmt.Errorf("%s --version: %w: %s", server, err, out)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return Etcd{}, fmt.Errorf("%s --version: no version in %q", server, out)
	}
	v := string(m[1])
	if !strings.HasPrefix(v, line+".") {
		return Etcd{}, fmt.Errorf("%s is etcd %s, want %s.x", server, v, line)
	}
	return Etcd{Line: line, Version: v, Server: server, Ctl: ctl}, nil
}

var ctlVersionRE = regexp.MustCompile(`etcdctl version: (\S+)`)

// probeCtl reports whether path is an etcdctl of the line.
func probeCtl(ctx context.Context, line, path string) bool {
	if _, err := os.Stat(path); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "version")
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	m := ctlVersionRE.FindSubmatch(out)
	return err == nil && m != nil && strings.HasPrefix(string(m[1]), line+".")
}

// cacheDir returns the directory of the built etcd releases.
func cacheDir() (string, error) {
	if d := os.Getenv(EnvCacheDir); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir() // $XDG_CACHE_HOME or ~/.cache
	if err != nil {
		return "", fmt.Errorf("etcd binary cache: %w (set %s)", err, EnvCacheDir)
	}
	return filepath.Join(d, "etcd-defrag-agent", "etcd"), nil
}

// buildEtcd returns the release from cache/<rel>/, building it there first
// if needed. An exclusive flock on cache/<rel>.lock serialises builders
// across processes; the binaries appear by an atomic rename, so a reader
// never sees half a file.
func buildEtcd(ctx context.Context, line, rel, cache string) (Etcd, string, error) {
	dir := filepath.Join(cache, rel)
	server, ctl := filepath.Join(dir, "etcd"), filepath.Join(dir, "etcdctl")
	if e, err := probeEtcd(ctx, line, server, ctl); err == nil {
		return e, "cached", nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Etcd{}, "", fmt.Errorf("etcd cache: %w", err)
	}
	unlock, err := flock(ctx, filepath.Join(cache, rel+".lock"))
	if err != nil {
		return Etcd{}, "", err
	}
	defer unlock()
	if e, err := probeEtcd(ctx, line, server, ctl); err == nil {
		return e, "cached", nil // another process built it meanwhile
	}
	work, err := os.MkdirTemp(cache, "build-"+rel+"-")
	if err != nil {
		return Etcd{}, "", fmt.Errorf("build etcd %s: %w", rel, err)
	}
	defer func() { _ = os.RemoveAll(work) }()
	if err := goBuildEtcd(ctx, rel, work); err != nil {
		return Etcd{}, "", err
	}
	staged := filepath.Join(work, "out")
	if err := os.Rename(filepath.Join(work, "bin", "server"), filepath.Join(work, "bin", "etcd")); err != nil {
		return Etcd{}, "", fmt.Errorf("build etcd %s: %w", rel, err)
	}
	if err := os.Rename(filepath.Join(work, "bin"), staged); err != nil {
		return Etcd{}, "", fmt.Errorf("build etcd %s: %w", rel, err)
	}
	_ = os.RemoveAll(dir) // a broken earlier attempt
	if err := os.Rename(staged, dir); err != nil {
		return Etcd{}, "", fmt.Errorf("build etcd %s: %w", rel, err)
	}
	e, err := probeEtcd(ctx, line, server, ctl)
	if err != nil {
		return Etcd{}, "", fmt.Errorf("build etcd %s: %w", rel, err)
	}
	return e, "built", nil
}

// toolsGo is the wrapper module's only source: it makes the module require
// etcd's server, etcdctl and etcdutl at one release, so `go build` of their
// main packages resolves every etcd module at that release (`go install
// pkg@version` refuses the server module because of its replace directives).
const toolsGo = `//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
`

// goBuildEtcd builds etcd (as bin/server) and etcdctl of release rel in a
// wrapper module in work. About 20-60 s on two cores with a cold build cache.
func goBuildEtcd(ctx context.Context, rel, work string) error {
	goBin, err := goTool()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(work, "go.mod"), []byte("module etcdbuild\n\ngo 1.26\n"), 0o644); err != nil {
		return fmt.Errorf("build etcd %s: %w", rel, err)
	}
	if err := os.WriteFile(filepath.Join(work, "tools.go"), []byte(toolsGo), 0o644); err != nil {
		return fmt.Errorf("build etcd %s: %w", rel, err)
	}
	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	steps := [][]string{
		{"get", "go.etcd.io/etcd/server/v3@" + rel, "go.etcd.io/etcd/etcdctl/v3@" + rel, "go.etcd.io/etcd/etcdutl/v3@" + rel},
		{"build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(work, "bin") + "/", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/etcdctl/v3"},
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, goBin, args...)
		cmd.Dir, cmd.Env = work, env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build etcd %s: go %s: %w\n%s", rel, args[0], err, out)
		}
	}
	return nil
}

// goTool returns the go command: the one on PATH, else GOROOT's.
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("the go command is not on PATH (needed to build etcd and the agent)")
}

// flock takes an exclusive lock on path, polling so that ctx can end the
// wait. The returned function releases it.
func flock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// BuildAgent builds the agent binary from ./cmd/agent of the product's
// module (the checkout this harness module replaces it with) into dir and
// returns its path. ctx bounds the build.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	where, err := exec.CommandContext(ctx, goBin, "list", "-m", "-f", "{{.Dir}}", productModule).Output()
	if err != nil {
		return "", fmt.Errorf("find the module %s: %w", productModule, err)
	}
	out := filepath.Join(dir, "etcd-defrag-agent")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/agent")
	cmd.Dir = strings.TrimSpace(string(where))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the agent: %w\n%s", err, b)
	}
	return out, nil
}

// productModule is the module of the agent; this harness's go.mod replaces
// it with the checkout it lives in.
const productModule = "github.com/etcd-defrag-agent/etcd-defrag-agent"
