//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// prepareTimeout bounds building the agent and the etcd binaries in Main.
const prepareTimeout = 10 * time.Minute

// suite is what Main prepared for the tests of this test binary: set once
// before m.Run, read-only afterwards.
var suite struct {
	agent string // path of the agent binary; "" when Main did not run
	owner string // marker prefix of every process of this test binary
}

// Main is the TestMain of a scenario package:
//
//	func TestMain(m *testing.M) { os.Exit(e2e.Main(m)) }
//
// Before the tests it builds the agent (./cmd/agent, a plain build into a
// temporary directory) and, in parallel, prepares the etcd of every line
// SelectedLines returns (EtcdBinary: cached builds are only checked). A line
// that cannot be prepared (3.4 not installed) fails only the tests that need
// it, with the reason. After the tests it fails the run on goroutines left
// behind, and scans /proc for any process the harness started and did not
// reap, kills it and fails the run.
func Main(m *testing.M) int {
	suite.owner = strconv.Itoa(os.Getpid()) + "/"
	dir, err := os.MkdirTemp("", "e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	lines, err := SelectedLines()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 2
	}

	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var agentErr error
	var agentTook time.Duration
	wg.Go(func() {
		t := time.Now()
		suite.agent, agentErr = BuildAgent(ctx, dir)
		agentTook = time.Since(t)
	})
	for _, l := range lines {
		wg.Go(func() { _, _ = EtcdBinary(ctx, l) }) // errors reach the tests
	}
	wg.Wait()
	if agentErr != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", agentErr)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: prepared in %v: agent built in %v", time.Since(start).Round(100*time.Millisecond), agentTook.Round(100*time.Millisecond))
	for _, l := range lines {
		fmt.Fprintf(os.Stderr, "; %s", describeBuild(l))
	}
	fmt.Fprintln(os.Stderr)

	code := m.Run()

	if code == 0 {
		if err := findLeaks(10 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: goroutines left behind by the harness: %v\n", err)
			code = 1
		}
	}
	pids, err := killOrphans(suite.owner)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: orphan scan: %v\n", err)
		code = 1
	}
	if len(pids) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: processes left running by the tests (killed now): %v\n", pids)
		code = 1
	}
	return code
}

// findLeaks reports goroutines the tests left behind (observers, clients,
// process waiters), trying again until timeout: closed gRPC and HTTP
// connections end their goroutines asynchronously.
func findLeaks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := goleak.Find()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// describeBuild says how the etcd of a line was prepared.
func describeBuild(line string) string {
	binaryCache.mu.Lock()
	b := binaryCache.lines[line]
	binaryCache.mu.Unlock()
	if b == nil || !isClosed(b.done) {
		return "etcd " + line + " not prepared"
	}
	if b.err != nil {
		return fmt.Sprintf("etcd %s unavailable (%v)", line, b.err)
	}
	return fmt.Sprintf("etcd %s %s in %v", b.etcd.Version, b.note, b.took.Round(100*time.Millisecond))
}

// AgentBinary returns the path of the agent binary Main built; it fails the
// test if Main did not run.
func AgentBinary(t testing.TB) string {
	t.Helper()
	if suite.agent == "" {
		t.Fatal("the agent binary is not built: the package's TestMain must call e2e.Main")
	}
	return suite.agent
}
