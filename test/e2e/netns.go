//go:build linux

package e2e

// Network namespaces for partitions (ClusterOptions.Netns): every member,
// with the agents started beside it, runs in a network namespace of its
// own, and nftables on the bridge that joins them cuts members off from
// each other.
//
// Topology of one cluster, <n> being "e2e<test pid>-<cluster id>":
//
//	root namespace (the test: observer, clients)
//	  e2e<id>  10.77.S.254/24 ──veth── "host" ┐
//	namespace <n>-sw:  bridge br0  ───────────┤  nftables: table bridge e2e
//	namespace <n>-m0:  eth0 10.77.S.1/24 ─veth─ "m0" ┤
//	namespace <n>-m1:  eth0 10.77.S.2/24 ─veth─ "m1" ┤
//	namespace <n>-m2:  eth0 10.77.S.3/24 ─veth─ "m2" ┘
//
// The bridge lives in a namespace of its own rather than in the root
// namespace: with br_netfilter loaded, frames bridged in the root namespace
// go through its iptables FORWARD chain, whose policy Docker sets to drop.
// In the switch namespace the only rules are the harness's. The test
// reaches every member through the "host" port at all times; a partition
// drops every frame (ARP included) between a member's port and the other
// members' ports, both ways, like a pulled cable between the nodes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// netnsRoot is where `ip netns` keeps its named namespaces.
const netnsRoot = "/run/netns"

// netSubnet is the first two octets of the members' addresses; the third is
// chosen per cluster (see newNetwork).
const netSubnet = "10.77"

// netCommandTimeout bounds one ip or nft command.
const netCommandTimeout = 30 * time.Second

// ErrNetnsPrivilege is wrapped by NetnsSupported when this process lacks the
// privileges to build network namespaces (not root, or no CAP_NET_ADMIN and
// CAP_SYS_ADMIN): the only reason a scenario that needs them may skip.
var ErrNetnsPrivilege = errors.New("no privilege for network namespaces")

// NetnsSupported returns nil if this process can build the network
// namespaces of ClusterOptions.Netns. Otherwise it says what is missing:
// an error wrapping ErrNetnsPrivilege without the capabilities (root, or
// CAP_NET_ADMIN and CAP_SYS_ADMIN), another error when ip (iproute2) or nft
// (nftables) is missing or cannot build a namespace with a bridge table.
func NetnsSupported() error {
	if err := haveCapabilities(); err != nil {
		return err
	}
	var missing []string
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s not installed: apt-get install -y iproute2 nftables (which .ci/run does)", strings.Join(missing, " and "))
	}
	// A probe: a namespace with a bridge-family table, then nothing left.
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	name := fmt.Sprintf("e2e%d-probe%s", os.Getpid(), randomHex()[:4])
	if err := netRun(ctx, nil, "ip", "netns", "add", name); err != nil {
		if errors.Is(err, syscall.EPERM) || strings.Contains(err.Error(), "ermission denied") || strings.Contains(err.Error(), "not permitted") {
			return fmt.Errorf("%w: %w", ErrNetnsPrivilege, err)
		}
		return err
	}
	defer func() { _ = netRun(context.Background(), nil, "ip", "netns", "del", name) }()
	if err := netRun(ctx, []byte(nftTable), "ip", "netns", "exec", name, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("nftables cannot filter bridged frames in a namespace (kernel without nf_tables bridge support?): %w", err)
	}
	return nil
}

// haveCapabilities checks the effective capabilities CAP_NET_ADMIN (12) and
// CAP_SYS_ADMIN (21; `ip netns add` bind-mounts the namespace).
func haveCapabilities() error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return fmt.Errorf("read capabilities %q: %w", line, err)
		}
		const netAdmin, sysAdmin = 1 << 12, 1 << 21
		if caps&netAdmin == 0 || caps&sysAdmin == 0 {
			return fmt.Errorf("%w: the test runs as uid %d with effective capabilities %#x, without CAP_NET_ADMIN and CAP_SYS_ADMIN (run it as root)",
				ErrNetnsPrivilege, os.Geteuid(), caps)
		}
		return nil
	}
	return errors.New("read capabilities: no CapEff in /proc/self/status")
}

// nftTable is the switch namespace's table: a forward chain on the bridge
// that Partition fills with drop rules and Heal flushes.
const nftTable = `table bridge e2e {
	chain forward {
		type filter hook forward priority 0; policy accept;
	}
}
`

// network is the namespaces, links and rules of one cluster.
type network struct {
	name   string // prefix of the namespaces: e2e<pid>-<id>
	hostIf string // the root namespace's end of the host veth
	subnet int    // the third octet

	mu          sync.Mutex
	partitioned map[string]bool // member name → cut off
}

// subnetsInUse are the third octets handed out in this process.
var subnetsInUse = struct {
	mu   sync.Mutex
	used map[int]bool
}{used: make(map[int]bool)}

// newNetwork builds the switch namespace, its bridge and table, and the
// host's link to it, for a cluster of members; the members' namespaces come
// with addMember. It registers the teardown with t.Cleanup first, so that
// everything built is removed even when a later step fails (the cluster's
// own cleanup, registered after, kills the processes before it runs).
func newNetwork(t testing.TB, id string) (*network, error) {
	sweepStaleNamespaces()
	n := &network{
		name:        fmt.Sprintf("e2e%d-%s", os.Getpid(), id[:6]),
		hostIf:      "e2e" + id,
		partitioned: make(map[string]bool),
	}
	if len(n.hostIf) > 15 {
		n.hostIf = n.hostIf[:15] // IFNAMSIZ
	}
	s, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	n.subnet = s
	t.Cleanup(func() {
		if err := n.teardown(); err != nil {
			t.Errorf("network teardown: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	sw := n.name + "-sw"
	steps := [][]string{
		{"ip", "netns", "add", sw},
		{"ip", "-n", sw, "link", "set", "lo", "up"},
		{"ip", "-n", sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", sw, "link", "set", "br0", "up"},
		{"ip", "link", "add", n.hostIf, "type", "veth", "peer", "name", "host", "netns", sw},
		{"ip", "-n", sw, "link", "set", "host", "master", "br0", "up"},
		{"ip", "addr", "add", n.hostAddr() + "/24", "dev", n.hostIf},
		{"ip", "link", "set", n.hostIf, "up"},
	}
	for _, s := range steps {
		if err := netRun(ctx, nil, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	if err := netRun(ctx, []byte(nftTable), "ip", "netns", "exec", sw, "nft", "-f", "-"); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	return n, nil
}

// freeSubnet picks a third octet S such that no local address is in
// 10.77.S.0/24 and no other cluster of this process has it.
func freeSubnet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("network: local addresses: %w", err)
	}
	subnetsInUse.mu.Lock()
	defer subnetsInUse.mu.Unlock()
	for range 500 {
		s := 1 + rand.IntN(254)
		if subnetsInUse.used[s] {
			continue
		}
		_, cidr, _ := net.ParseCIDR(fmt.Sprintf("%s.%d.0/24", netSubnet, s))
		taken := false
		for _, a := range addrs {
			if ip, ok := a.(*net.IPNet); ok && cidr.Contains(ip.IP) {
				taken = true
			}
		}
		if !taken {
			subnetsInUse.used[s] = true
			return s, nil
		}
	}
	return 0, fmt.Errorf("network: no free subnet in %s.0.0/16", netSubnet)
}

// hostAddr is the root namespace's address on the cluster's network.
func (n *network) hostAddr() string { return fmt.Sprintf("%s.%d.254", netSubnet, n.subnet) }

// memberNS is the namespace of member i's processes.
func (n *network) memberNS(name string) string { return n.name + "-" + name }

// addMember builds the namespace of member i (named name) and links it to
// the bridge. It returns the namespace and the member's address.
func (n *network) addMember(i int, name string) (ns, addr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	ns, sw := n.memberNS(name), n.name+"-sw"
	addr = fmt.Sprintf("%s.%d.%d", netSubnet, n.subnet, i+1)
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", name, "netns", sw},
		{"ip", "-n", sw, "link", "set", name, "master", "br0", "up"},
		{"ip", "-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := netRun(ctx, nil, s[0], s[1:]...); err != nil {
			return "", "", fmt.Errorf("network of %s: %w", name, err)
		}
	}
	return ns, addr, nil
}

// partition drops every frame between the ports of the members named cut
// and the ports of every other member, both ways; the host port stays
// connected.
func (n *network) partition(cut ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	var rules bytes.Buffer
	for _, name := range cut {
		if n.partitioned[name] {
			continue
		}
		fmt.Fprintf(&rules, "add rule bridge e2e forward iifname %q oifname != \"host\" drop\n", name)
		fmt.Fprintf(&rules, "add rule bridge e2e forward oifname %q iifname != \"host\" drop\n", name)
	}
	if rules.Len() == 0 {
		return nil
	}
	if err := netRun(ctx, rules.Bytes(), "ip", "netns", "exec", n.name+"-sw", "nft", "-f", "-"); err != nil {
		return fmt.Errorf("partition %v: %w", cut, err)
	}
	for _, name := range cut {
		n.partitioned[name] = true
	}
	return nil
}

// heal removes every partition.
func (n *network) heal() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	if err := netRun(ctx, nil, "ip", "netns", "exec", n.name+"-sw", "nft", "flush", "chain", "bridge", "e2e", "forward"); err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	clear(n.partitioned)
	return nil
}

// rules returns the switch namespace's nftables ruleset, for messages.
func (n *network) rules() string {
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.name+"-sw", "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(nft list ruleset: %v: %s)", err, out)
	}
	return string(out)
}

// teardown removes the table, the host's veth (its peer goes with it) and
// every namespace of the network, and checks that none is left. It runs
// after the cluster's processes are gone; a namespace still in use by a
// process would only lose its name.
func (n *network) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
	defer cancel()
	var errs []error
	sw := n.name + "-sw"
	if fileExists(netnsRoot + "/" + sw) {
		if err := netRun(ctx, nil, "ip", "netns", "exec", sw, "nft", "delete", "table", "bridge", "e2e"); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := net.InterfaceByName(n.hostIf); err == nil {
		if err := netRun(ctx, nil, "ip", "link", "del", n.hostIf); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range n.namespaces() {
		if err := netRun(ctx, nil, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if left := n.namespaces(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left: %v", left))
	}
	if _, err := net.InterfaceByName(n.hostIf); err == nil {
		errs = append(errs, fmt.Errorf("link %s left", n.hostIf))
	}
	subnetsInUse.mu.Lock()
	delete(subnetsInUse.used, n.subnet)
	subnetsInUse.mu.Unlock()
	return errors.Join(errs...)
}

// namespaces lists the named namespaces of this network.
func (n *network) namespaces() []string {
	entries, _ := os.ReadDir(netnsRoot) // none yet: no namespaces
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), n.name+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// sweepStaleNamespaces deletes the namespaces of test processes that are
// gone (a test binary killed before its cleanup): their names carry the
// PID. Their links and tables go with them.
func sweepStaleNamespaces() {
	entries, _ := os.ReadDir(netnsRoot)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "e2e")
		if !ok {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			ctx, cancel := context.WithTimeout(context.Background(), netCommandTimeout)
			_ = netRun(ctx, nil, "ip", "netns", "del", e.Name()) // best effort: stale
			cancel()
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// netRun runs a command with stdin, and returns an error with its output if it
// fails.
func netRun(ctx context.Context, stdin []byte, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Partition cuts the members ms off from every other member of the
// cluster: nftables on the bridge drops every frame between their network
// namespaces and the others', both ways. Each member and its agents keep
// running and reach each other; the harness (observer, clients) still
// reaches every member. It needs ClusterOptions.Netns.
func (c *Cluster) Partition(ms ...*Member) error {
	if c.net == nil {
		return errors.New("partition: the cluster was started without ClusterOptions.Netns")
	}
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	return c.net.partition(names...)
}

// Heal removes every partition made by Partition.
func (c *Cluster) Heal() error {
	if c.net == nil {
		return errors.New("heal: the cluster was started without ClusterOptions.Netns")
	}
	return c.net.heal()
}

// NetworkRules returns the nftables ruleset of the cluster's bridge, for
// messages; "" without ClusterOptions.Netns.
func (c *Cluster) NetworkRules() string {
	if c.net == nil {
		return ""
	}
	return c.net.rules()
}
