package agent

import (
	"fmt"
	"os"
	"testing"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestMain fails the package if goroutines outlive the tests: the agent
// starts keep-alives, watches and a scheduler that must all end on Close.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := etcdtest.FindLeaks(2 * etcdtest.PeerConnLinger); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
