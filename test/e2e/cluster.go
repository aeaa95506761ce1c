//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Timings of every member, with the reasons.
const (
	// heartbeatMs and electionMs: etcd's defaults are 100 and 1000. A
	// shorter heartbeat makes leader changes and restarts quick; the
	// election timeout stays at etcd's default because on two cores a
	// member that fsyncs a defragmented copy of a few hundred MiB, next to
	// two other members, agents and the test, can miss heartbeats for
	// several hundred milliseconds, and a needless election would change
	// who must go last.
	heartbeatMs = 50
	electionMs  = 1000
	// snapshotCount: a raft snapshot every 1000 applied entries (etcd's
	// default is 10000 or 100000): the fills send MiB-sized entries, which
	// raft keeps in memory until a snapshot.
	snapshotCount = 1000
	// startTimeout bounds the start of a cluster or a member until it
	// answers linearizable reads.
	startTimeout = 60 * time.Second
	// requestTimeout bounds one request of the harness (Status, a read).
	requestTimeout = 5 * time.Second
)

// DefaultLockPrefix is the agents' default --lock-prefix.
const DefaultLockPrefix = "/etcd-defrag-agent/"

// EnvKeep names a directory under which every cluster keeps its directory
// (data, etcd logs, agent logs) instead of a t.TempDir removed at the end.
const EnvKeep = "E2E_KEEP"

// ClusterOptions configures NewCluster.
type ClusterOptions struct {
	// Line is the etcd line: "3.4", "3.5", "3.6" or "3.7". Required.
	Line string
	// Members is the number of voting members; 0 means 3.
	Members int
	// QuotaBackendBytes is etcd's --quota-backend-bytes; 0 means etcd's
	// default (2 GiB). Agents of a cluster on etcd < 3.6 (whose Status does
	// not report the quota) get --etcd-storage-quota-bytes with this value.
	QuotaBackendBytes int64
	// MaxRequestBytes is etcd's --max-request-bytes; 0 means etcd's default
	// (1.5 MiB). The harness's clients raise their send limit to match.
	MaxRequestBytes int
	// ExtraArgs are appended to every member's command line.
	ExtraArgs []string
	// SmallDisks puts the data directory of member i (by index) on a tmpfs
	// of the given size in bytes, and its write-ahead log on the harness's
	// disk (--wal-dir): a member whose filesystem has little room, for the
	// agents' free-disk guard. It needs root (mount); Member.ResizeDisk
	// changes the size. The cleanup unmounts it after the members are gone.
	SmallDisks map[int]int64
	// LockPrefix is the agents' --lock-prefix and what the observer watches;
	// "" means DefaultLockPrefix.
	LockPrefix string
	// NoGaugeSampling turns the observer's sampling of the members'
	// etcd_disk_defrag_inflight gauges off: it judges I1 from the members'
	// log lines alone. A scrape costs etcd about 3.6 ms of CPU, every 20 ms
	// per member, which a benchmark would measure along with the agents.
	NoGaugeSampling bool
	// Netns runs every member, and every agent started beside it, in a
	// network namespace of its own on a bridge (see netns.go), with an
	// address of its own instead of 127.0.0.1, so that Partition can cut
	// members off from each other. It needs root and ip and nft: check
	// NetnsSupported first.
	Netns bool
}

// Cluster is a running etcd cluster of separate member processes, the
// agents started beside them, and its Observer. NewCluster starts it and
// registers its teardown. Methods are safe for concurrent use.
type Cluster struct {
	// Etcd is the release the members run.
	Etcd Etcd
	// LockPrefix is the agents' lock prefix.
	LockPrefix string

	t     testing.TB
	opts  ClusterOptions
	dir   string
	owner string // marker of this cluster's processes
	token string

	members []*Member // fixed after NewCluster
	obs     *Observer
	net     *network // with ClusterOptions.Netns

	mu       sync.Mutex
	agents   []*Agent
	cli      *clientv3.Client
	problems []string // unexpected process exits, reported at cleanup
	closed   bool
}

// Member is one etcd member process of a Cluster.
type Member struct {
	// Name is the member's name: "m0", "m1", … in start order.
	Name string
	// ID is the member's ID, known once NewCluster returns.
	ID uint64
	// ClientURL, PeerURL and MetricsURL are the member's loopback URLs
	// (--listen-metrics-urls serves /metrics and /health).
	ClientURL, PeerURL, MetricsURL string
	// Dir is the data directory, kept across Kill and Restart.
	Dir string
	// WALDir is the write-ahead log's directory when it is not under Dir
	// (ClusterOptions.SmallDisks), else "".
	WALDir string
	// LogPath is etcd's own JSON log (--log-outputs), appended across
	// restarts; OutPath receives the process's stdout and stderr.
	LogPath, OutPath string

	c     *Cluster
	proc  *process
	host  string // the address the member listens on: 127.0.0.1, or its own with ClusterOptions.Netns
	netns string // the network namespace of its processes; "" for the harness's

	mu  sync.Mutex
	cli *clientv3.Client // a client of this member only
}

// NewCluster starts the members of a cluster on etcd opts.Line, waits until
// every member answers a linearizable read and all agree on a leader, and
// starts the cluster's Observer. It fails the test if the line is not
// available (for 3.4, with how to install it) or the cluster does not
// start. Its cleanup kills the agents, stops the observer and runs its
// checks (I1, I3), kills the members, and fails the test if any process of
// the cluster survives or had exited unexpectedly.
func NewCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Members == 0 {
		opts.Members = 3
	}
	if opts.LockPrefix == "" {
		opts.LockPrefix = DefaultLockPrefix
	}
	if suite.owner == "" {
		t.Fatal("e2e.Main did not run: the package's TestMain must call it")
	}
	ctx, cancel := context.WithTimeout(t.Context(), prepareTimeout)
	e, err := EtcdBinary(ctx, opts.Line)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		c, err := startCluster(t, e, opts)
		if err == nil {
			return c
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
		t.Logf("start cluster: %v; trying again with new ports", err)
	}
	t.Fatalf("start etcd %s cluster: %v", e.Version, lastErr)
	return nil
}

var errPortTaken = errors.New("a port was taken")

func startCluster(t testing.TB, e Etcd, opts ClusterOptions) (_ *Cluster, err error) {
	id := randomHex()
	c := &Cluster{
		Etcd: e, LockPrefix: opts.LockPrefix, t: t, opts: opts,
		owner: suite.owner + id + "/", token: "e2e-" + id,
	}
	if keep := os.Getenv(EnvKeep); keep != "" {
		if err := os.MkdirAll(keep, 0o755); err != nil {
			return nil, err
		}
		c.dir, err = os.MkdirTemp(keep, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"-")
		if err != nil {
			return nil, err
		}
		t.Logf("cluster directory (kept): %s", c.dir)
	} else {
		c.dir = t.TempDir()
	}
	if opts.Netns {
		if c.net, err = newNetwork(t, id); err != nil {
			return nil, err
		}
	}
	var initial []string
	for i := range opts.Members {
		m, err := c.newMember(i)
		if err != nil {
			return nil, err
		}
		c.members = append(c.members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.members {
		m.proc.args = c.memberArgs(m, strings.Join(initial, ","))
	}
	for i, size := range opts.SmallDisks {
		// Before c.close is registered: cleanups run last first, so the
		// members are gone before the unmount.
		if err := c.members[i].mountDisk(t, size); err != nil {
			return nil, err
		}
	}
	c.obs = newObserver(c)
	t.Cleanup(c.close) // from here on, everything started is torn down
	defer func() {
		if err != nil { // free the ports now for the next attempt
			for _, m := range c.members {
				_ = m.proc.kill()
			}
		}
	}()

	for _, m := range c.members {
		if err := m.proc.start(); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	for _, m := range c.members {
		if err := m.waitStarted(ctx); err != nil {
			return nil, err
		}
	}
	if _, err := c.Leader(ctx); err != nil {
		return nil, err
	}
	if err := c.obs.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func randomHex() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// newMember allocates the ports and paths of member i.
func (c *Cluster) newMember(i int) (*Member, error) {
	var ports [3]int
	for j := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[j] = p
	}
	name := fmt.Sprintf("m%d", i)
	host, netns := "127.0.0.1", ""
	if c.net != nil {
		var err error
		if netns, host, err = c.net.addMember(i, name); err != nil {
			return nil, err
		}
	}
	var walDir string
	if _, ok := c.opts.SmallDisks[i]; ok {
		walDir = filepath.Join(c.dir, name, "wal")
	}
	m := &Member{
		Name:       name,
		WALDir:     walDir,
		ClientURL:  fmt.Sprintf("http://%s:%d", host, ports[0]),
		PeerURL:    fmt.Sprintf("http://%s:%d", host, ports[1]),
		MetricsURL: fmt.Sprintf("http://%s:%d", host, ports[2]),
		Dir:        filepath.Join(c.dir, name, "data"),
		LogPath:    filepath.Join(c.dir, name, "etcd.log"),
		OutPath:    filepath.Join(c.dir, name, "etcd.out"),
		c:          c,
		host:       host,
		netns:      netns,
	}
	m.proc = &process{name: "etcd " + name, path: c.Etcd.Server, outPath: m.OutPath, owner: c.owner + name, netns: netns}
	m.proc.addExitHook(func(_ *process, state *os.ProcessState, expected bool) {
		c.obs.memberExited(m, time.Now())
		if !expected {
			c.problem(fmt.Sprintf("etcd member %s exited unexpectedly (%v); last lines of %s:\n%s\nand of %s:\n%s",
				m.Name, state, m.OutPath, tail(m.OutPath, 5), m.LogPath, tail(m.LogPath, 5)))
		}
	})
	return m, nil
}

// memberArgs is the command line of a member. The same flags work on etcd
// 3.4 to 3.7; 3.4 needs --logger=zap and --pre-vote (default there: capnslog,
// no pre-vote).
func (c *Cluster) memberArgs(m *Member, initialCluster string) []string {
	args := []string{
		"--name=" + m.Name,
		"--data-dir=" + m.Dir,
		"--listen-client-urls=" + m.ClientURL,
		"--advertise-client-urls=" + m.ClientURL,
		"--listen-peer-urls=" + m.PeerURL,
		"--initial-advertise-peer-urls=" + m.PeerURL,
		"--listen-metrics-urls=" + m.MetricsURL,
		"--initial-cluster=" + initialCluster,
		"--initial-cluster-state=new",
		"--initial-cluster-token=" + c.token,
		"--heartbeat-interval=" + strconv.Itoa(heartbeatMs),
		"--election-timeout=" + strconv.Itoa(electionMs),
		"--snapshot-count=" + strconv.Itoa(snapshotCount),
		"--pre-vote=true",
		"--auto-compaction-retention=0",
		"--logger=zap",
		"--log-level=info",
		"--log-outputs=" + m.LogPath,
	}
	if c.opts.QuotaBackendBytes > 0 {
		args = append(args, "--quota-backend-bytes="+strconv.FormatInt(c.opts.QuotaBackendBytes, 10))
	}
	if m.WALDir != "" {
		args = append(args, "--wal-dir="+m.WALDir)
	}
	if c.opts.MaxRequestBytes > 0 {
		args = append(args, "--max-request-bytes="+strconv.Itoa(c.opts.MaxRequestBytes))
	}
	return append(args, c.opts.ExtraArgs...)
}

// problem records an unexpected event, reported as a test error at cleanup.
func (c *Cluster) problem(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.problems = append(c.problems, s)
}

// Members returns the members in start order.
func (c *Cluster) Members() []*Member { return c.members }

// MemberByID returns the member with the given ID, or nil.
func (c *Cluster) MemberByID(id uint64) *Member {
	for _, m := range c.members {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// Endpoints returns the client URLs of every member.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// Dir returns the cluster's directory: one subdirectory per member and
// per agent, with their data and logs.
func (c *Cluster) Dir() string { return c.dir }

// Observer returns the cluster's outside observer, running from NewCluster
// until the cleanup.
func (c *Cluster) Observer() *Observer { return c.obs }

// clientConfig returns the configuration of a harness client.
func (c *Cluster) clientConfig(endpoints ...string) clientv3.Config {
	cfg := clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	}
	if c.opts.MaxRequestBytes > 0 {
		cfg.MaxCallSendMsgSize = c.opts.MaxRequestBytes + (1 << 20)
	}
	return cfg
}

// Client returns the cluster's client of every member's endpoint, owned by
// the cluster (closed at cleanup; do not close it).
func (c *Cluster) Client() *clientv3.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cli == nil {
		cli, err := clientv3.New(c.clientConfig(c.Endpoints()...))
		if err != nil {
			c.t.Fatalf("client of %v: %v", c.Endpoints(), err) // only on a bad configuration
		}
		c.cli = cli
	}
	return c.cli
}

// Leader waits until every running member answers Status and all name the
// same leader, which is one of them, and returns it. ctx bounds the wait.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	var last error
	for {
		lead, err := c.agreedLeader(ctx)
		if err == nil {
			return lead, nil
		}
		last = err
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return nil, fmt.Errorf("wait for a leader: %w (last: %w)", err, last)
		}
	}
}

func (c *Cluster) agreedLeader(ctx context.Context) (*Member, error) {
	var lead uint64
	for _, m := range c.members {
		if !m.proc.running() {
			continue
		}
		st, err := m.Status(ctx)
		if err != nil {
			return nil, err
		}
		if st.Leader == 0 || (lead != 0 && st.Leader != lead) {
			return nil, fmt.Errorf("members disagree on the leader (%x, %x)", lead, st.Leader)
		}
		lead = st.Leader
	}
	if m := c.MemberByID(lead); m != nil && m.proc.running() {
		return m, nil
	}
	return nil, fmt.Errorf("leader %x is not a running member", lead)
}

// Revision returns the cluster's current revision (a linearizable read),
// asking one member after the other until one answers: a member that
// defragments answers nothing until it is done.
func (c *Cluster) Revision(ctx context.Context) (int64, error) {
	var errs []error
	for {
		for _, m := range c.members {
			cli, err := m.Client()
			if err != nil {
				errs = append(errs, err)
				continue
			}
			actx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := cli.Get(actx, HarnessPrefix+"revision", clientv3.WithCountOnly())
			cancel()
			if err == nil {
				return resp.Header.Revision, nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("revision: %w", errors.Join(errs...))
		}
		errs = errs[:0]
	}
}

// WaitHealthy waits until every running member answers a linearizable read
// through its own endpoint. ctx bounds the wait.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, m := range c.members {
		if !m.proc.running() {
			continue
		}
		if err := m.WaitHealthy(ctx); err != nil {
			return err
		}
	}
	return nil
}

// pause waits d or until ctx ends; it is the poll interval of the waits on
// conditions, never a synchronisation by itself.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// close is the cluster's cleanup.
func (c *Cluster) close() {
	t := c.t
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	agents := c.agents
	c.mu.Unlock()
	for _, a := range agents {
		if err := a.proc.kill(); err != nil {
			t.Errorf("kill agent of %s: %v", a.Member.Name, err)
		}
	}
	c.obs.stop()
	c.obs.check(t)
	for _, m := range c.members {
		if err := m.proc.kill(); err != nil {
			t.Errorf("kill member %s: %v", m.Name, err)
		}
	}
	c.mu.Lock()
	if c.cli != nil {
		_ = c.cli.Close()
	}
	problems := c.problems
	c.mu.Unlock()
	for _, m := range c.members {
		m.closeClient()
	}
	for _, p := range problems {
		t.Error(p)
	}
	if pids, err := killOrphans(c.owner); err != nil || len(pids) > 0 {
		t.Errorf("processes of the cluster left running after its teardown (killed now): %v %v", pids, err)
	}
	c.obs.report(t)
	if t.Failed() {
		for _, a := range agents {
			t.Logf("last lines of the agent of %s (%s):\n%s", a.Member.Name, a.LogPath, tail(a.LogPath, 30))
		}
	}
}

// Status returns the member's Status, through its own endpoint, bounded by
// ctx and requestTimeout.
func (m *Member) Status(ctx context.Context) (*clientv3.StatusResponse, error) {
	cli, err := m.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	st, err := cli.Status(ctx, m.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", m.Name, err)
	}
	return st, nil
}

// Client returns a client of this member's endpoint only, owned by the
// member (closed at cleanup; do not close it).
func (m *Member) Client() (*clientv3.Client, error) { return m.client() }

func (m *Member) client() (*clientv3.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cli == nil {
		cli, err := clientv3.New(m.c.clientConfig(m.ClientURL))
		if err != nil {
			return nil, fmt.Errorf("client of %s: %w", m.Name, err)
		}
		m.cli = cli
	}
	return m.cli, nil
}

func (m *Member) closeClient() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cli != nil {
		_ = m.cli.Close()
		m.cli = nil
	}
}

// answers reports whether the member answers a linearizable read within
// timeout.
func (m *Member) answers(ctx context.Context, timeout time.Duration) error {
	cli, err := m.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = cli.Get(ctx, HarnessPrefix+"health", clientv3.WithCountOnly())
	return err
}

// WaitHealthy waits until the member answers a linearizable read through
// its own endpoint (it is up, knows a leader and the cluster has quorum).
// ctx bounds the wait; it fails at once if the process is not running.
func (m *Member) WaitHealthy(ctx context.Context) error {
	var last error
	for {
		if !m.proc.running() {
			return fmt.Errorf("member %s is not running (%v); last lines of its log:\n%s", m.Name, m.proc.exitState(), tail(m.LogPath, 5))
		}
		last = m.answers(ctx, time.Second)
		if last == nil {
			return nil
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("wait for member %s to answer: %w (last: %w)", m.Name, err, last)
		}
	}
}

// waitStarted waits for a member of a new cluster: it answers, and its ID is
// recorded. A member that exits first because a port was taken yields
// errPortTaken.
func (m *Member) waitStarted(ctx context.Context) error {
	for {
		if !m.proc.running() {
			out := tail(m.OutPath, 10) + "\n" + tail(m.LogPath, 10)
			if strings.Contains(out, "address already in use") {
				return fmt.Errorf("member %s: %w:\n%s", m.Name, errPortTaken, out)
			}
			return fmt.Errorf("member %s exited at start (%v):\n%s", m.Name, m.proc.exitState(), out)
		}
		if err := m.answers(ctx, time.Second); err == nil {
			st, err := m.Status(ctx)
			if err == nil {
				m.ID = st.Header.MemberId
				return nil
			}
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return fmt.Errorf("wait for member %s to start: %w; last lines of its log:\n%s", m.Name, err, tail(m.LogPath, 10))
		}
	}
}

// PID returns the PID of the member's current (or last) process.
func (m *Member) PID() int { return m.proc.pid() }

// Running reports whether the member's process is alive (it may be
// stopped).
func (m *Member) Running() bool { return m.proc.running() }

// Kill SIGKILLs the member's process group and waits until it is reaped.
// The data directory stays for Restart.
func (m *Member) Kill() error { return m.proc.kill() }

// Terminate sends SIGTERM to the member's etcd, as the kubelet does in a
// rollout, and waits until it exited, up to grace (then SIGKILL).
func (m *Member) Terminate(grace time.Duration) error {
	_, err := m.proc.terminate(grace)
	return err
}

// Stop freezes the member with SIGSTOP: it keeps its ports but answers
// nothing, like a hung machine.
func (m *Member) Stop() error { return m.proc.signal(syscall.SIGSTOP) }

// Cont resumes a stopped member with SIGCONT.
func (m *Member) Cont() error { return m.proc.signal(syscall.SIGCONT) }

// Restart starts a killed member again with the same data directory and
// ports, and waits until it answers a linearizable read. ctx bounds the
// wait.
func (m *Member) Restart(ctx context.Context) error {
	if err := m.proc.start(); err != nil {
		return err
	}
	return m.WaitHealthy(ctx)
}

// mountDisk mounts a tmpfs of size bytes on the member's data directory and
// registers its unmount.
func (m *Member) mountDisk(t testing.TB, size int64) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("ClusterOptions.SmallDisks mounts a tmpfs: run the suite as root (uid %d)", os.Geteuid())
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return err
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", m.Dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount a tmpfs of %d bytes on %s: %w: %s", size, m.Dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", m.Dir).CombinedOutput(); err != nil {
			t.Errorf("unmount the tmpfs on %s: %v: %s", m.Dir, err, out)
		}
	})
	return nil
}

// ResizeDisk changes the size of the tmpfs that holds the member's data
// directory (ClusterOptions.SmallDisks): room made, or taken away.
func (m *Member) ResizeDisk(size int64) error {
	if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%d", size), m.Dir).CombinedOutput(); err != nil {
		return fmt.Errorf("resize the tmpfs on %s to %d bytes: %w: %s", m.Dir, size, err, out)
	}
	return nil
}
