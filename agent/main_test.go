package agent

import (
	"testing"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestMain fails the package if goroutines outlive the tests: the agent
// starts keep-alives, watches and a scheduler that must all end on Close.
func TestMain(m *testing.M) { etcdtest.Main(m) }
