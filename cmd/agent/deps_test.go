package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksOnlyEtcdClient: the sidecar binary links etcd's client, never its
// server (embedded etcd is for tests and the demo), so the image stays small.
func TestLinksOnlyEtcdClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"go.etcd.io/etcd/server/", "go.etcd.io/bbolt", "go.etcd.io/raft/", "/internal/etcdtest"} {
			if strings.Contains(pkg, banned) {
				t.Errorf("cmd/agent links %s", pkg)
			}
		}
	}
}
