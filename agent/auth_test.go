package agent

import (
	"strings"
	"testing"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestAuthNeedsRoot: with etcd auth on, an agent whose user lacks the root
// role says so, naming the user and the role, before it takes a turn; the
// root user defragments.
func TestAuthNeedsRoot(t *testing.T) {
	c := newCluster(t, etcdtest.Options{Auth: true})
	m := followers(t, c)[0]

	alice := newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.User = etcdtest.AliceUser }))
	err := alice.RunOnce(t.Context())
	if got := blockedReason(t, err); got != ReasonPermission {
		t.Fatalf("reason = %q, want %q (err %v)", got, ReasonPermission, err)
	}
	for _, want := range []string{`"alice"`, "root role"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Fatalf("defrags by a non-root user: %v", ds)
	}

	root := newTestAgent(t, c, m, "true", withConfig(func(c *Config) { c.User = etcdtest.RootUser }))
	if err := root.RunOnce(t.Context()); err != nil {
		t.Fatalf("root: %v", err)
	}
	if ds := c.Defrags(); len(ds) != 1 {
		t.Errorf("defrags by root: %v, want 1", ds)
	}
}

// TestTLSClientCerts: members that require client certificates; the agent
// works with the cluster's client certificate (the etcd user is the
// certificate's common name).
func TestTLSClientCerts(t *testing.T) {
	c := newCluster(t, etcdtest.Options{TLS: true})
	var agents []*testAgent
	for _, m := range c.Members() {
		agents = append(agents, newTestAgent(t, c, m, "true"))
	}
	for i, err := range runAll(t.Context(), agents...) {
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
	}
	ds := c.Defrags()
	checkEachOnce(t, ds, c.Members())
	checkOneAtATime(t, ds)
}
