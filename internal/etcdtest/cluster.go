package etcdtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// Users and passwords created with Options.Auth.
const (
	// RootUser has etcd's root role: it may Defragment, Compact, HashKV and
	// disarm alarms.
	RootUser     = "root"
	RootPassword = "rootpw"
	// AliceUser has role AliceRole only: read and write on every key, but
	// none of the root-only maintenance RPCs.
	AliceUser     = "alice"
	AlicePassword = "alicepw"
	// AliceRole grants readwrite on the whole key space: key "\x00" with
	// range end "\x00", as `etcdctl role grant-permission --prefix readwrite
	// readwrite ""` writes it.
	AliceRole = "readwrite"
)

var passwords = map[string]string{RootUser: RootPassword, AliceUser: AlicePassword}

// Options configures a Cluster. The zero value starts three plaintext
// members without auth.
type Options struct {
	// Members is the number of voting members; 0 means 3.
	Members int
	// QuotaBackendBytes is etcd's --quota-backend-bytes; 0 means etcd's
	// default (2 GiB).
	QuotaBackendBytes int64
	// TLS makes members serve clients over https with a certificate of a
	// generated CA, and require a client certificate of that CA
	// (ClientCertAuth). Peer traffic stays plain http. See Cluster.TLSFiles.
	TLS bool
	// Auth enables etcd auth with users RootUser (role root) and AliceUser
	// (role AliceRole). Clients from Cluster.Client log in as RootUser.
	Auth bool
	// MaxTxnOps is etcd's --max-txn-ops; 0 means etcd's default (128).
	MaxTxnOps uint
	// MaxRequestBytes is etcd's --max-request-bytes; 0 means etcd's default
	// (1.5 MiB). Clients from this cluster raise their send limit to match.
	MaxRequestBytes uint
	// UnsafeNoFsync is etcd's --unsafe-no-fsync: no fsync of the WAL and the
	// backend. Off by default, as in etcd: on the development machine
	// (virtio disk, 2 cores) it changed Fill and defrag times by less than
	// their run-to-run noise. It does not apply to a defrag's temporary
	// database, which bbolt always syncs.
	UnsafeNoFsync bool
	// Logger, when set, receives every log entry of every member, with a
	// "member" field. Nil discards everything except what the defrag
	// recorder needs.
	Logger *zap.Logger
	// Dir is the parent of the cluster's temporary directory; "" means
	// os.TempDir(). New uses t.TempDir().
	Dir string
}

// Cluster is a running embedded etcd cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	opts  Options
	dir   string
	token string
	rec   *recorder
	tls   *tlsFiles
	// clientTLS holds the client TLS configuration of each user.
	clientTLS map[string]*tls.Config

	mu      sync.Mutex
	members []*Member
	next    int // number of the next member name
	closed  bool
	holds   []*etcddata.HeldSnapshot // released by Close

	addMu     sync.Mutex // serialises AddLearner
	closeOnce sync.Once
}

// Start starts a cluster of opts.Members voting members on loopback ports
// in a new temporary directory, and returns once every member serves
// clients and all of them know the same leader (and, with Options.Auth,
// auth is enabled). ctx bounds the start; on any error, everything started
// is stopped and removed. The caller must Close the cluster.
//
// If another process takes a probed port before etcd binds it, Start tries
// again with new ports, up to three times.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Members == 0 {
		opts.Members = 3
	}
	if opts.Members < 0 {
		return nil, fmt.Errorf("members = %d, want > 0", opts.Members)
	}
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, opts)
		if err != nil && isAddrInUse(err) && attempt < 3 {
			continue
		}
		return c, err
	}
}

func start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	dir, err := os.MkdirTemp(opts.Dir, "etcdtest-")
	if err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	c := &Cluster{opts: opts, dir: dir, rec: newRecorder(), token: "etcdtest-" + randomHex()}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if opts.TLS {
		if c.tls, err = generateTLS(filepath.Join(dir, "tls")); err != nil {
			return nil, err
		}
		c.clientTLS = make(map[string]*tls.Config)
		for user := range passwords {
			info := transport.TLSInfo{
				CertFile:      c.tls.ClientCert[user],
				KeyFile:       c.tls.ClientKey[user],
				TrustedCAFile: c.tls.CA,
			}
			if c.clientTLS[user], err = info.ClientConfig(); err != nil {
				return nil, fmt.Errorf("client tls config for %s: %w", user, err)
			}
		}
	}

	var initial []string
	for range opts.Members {
		m, err := c.newMember()
		if err != nil {
			return nil, err
		}
		// Nobody else sees the cluster before Start returns, so the IDs
		// set by start below race with no reader.
		if err := c.addMember(m); err != nil {
			return nil, err
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.members {
		m.initialCluster = strings.Join(initial, ",")
		m.clusterState = "new"
	}

	// One after the other: a new member first asks every other peer URL
	// whether the cluster is already bootstrapped, with a 1 s timeout per
	// peer (not configurable through embed). A port that nobody listens on
	// answers at once; a member that is starting (bound but not serving
	// yet) makes it wait the full second. Started in order, every earlier
	// member already serves its peer URL and every later one is not bound
	// yet: 0.1 s instead of 2 s for three members.
	for _, m := range c.members {
		if err := m.start(); err != nil {
			return nil, err
		}
	}
	for _, m := range c.members {
		if err := m.waitReady(ctx); err != nil {
			return nil, err
		}
	}
	if _, err := c.Leader(ctx); err != nil {
		return nil, err
	}
	if opts.Auth {
		if err := c.enableAuth(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// newMember creates the next member with fresh ports; the caller appends
// it to c.members once its ID is known (see addMember).
func (c *Cluster) newMember() (*Member, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if c.tls != nil {
		scheme = "https"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	name := fmt.Sprintf("m%d", c.next)
	c.next++
	m := &Member{
		Name:      name,
		ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, clientPort),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		Dir:       filepath.Join(c.dir, name),
		c:         c,
	}
	return m, nil
}

// addMember appends m to the cluster's members, unless the cluster is
// closed.
func (c *Cluster) addMember(m *Member) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster is closed")
	}
	c.members = append(c.members, m)
	return nil
}

func randomHex() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// SkipShort skips a test that needs a real etcd when go test runs with
// -short (the fast tier: decisions, parsing, formatting); make test runs
// everything.
func SkipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real etcd cluster: not in the fast tier (go test -short)")
	}
}

// New starts a cluster like Start, bounded by t.Context(), in t.TempDir(),
// registers Close with t.Cleanup, and fails the test if the cluster does not
// start. With go test -short it skips the test instead: the fast tier runs
// only what needs no etcd.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	SkipShort(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("start etcd cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func (c *Cluster) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close stops every member at once (HardStop, then closing its listeners,
// all members in parallel) and removes the cluster's directory. It is
// idempotent; clients of the cluster are not closed.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		members, holds := c.members, c.holds
		c.mu.Unlock()
		for _, h := range holds {
			h.Release()
		}
		var wg sync.WaitGroup
		for _, m := range members {
			wg.Go(m.Stop)
		}
		wg.Wait()
		_ = os.RemoveAll(c.dir) // best effort: a temp dir
	})
}

// Members returns every member, voters and learners, running or stopped, in
// start order.
func (c *Cluster) Members() []*Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Member(nil), c.members...)
}

// MemberByName returns the member with the given name, or nil.
func (c *Cluster) MemberByName(name string) *Member {
	for _, m := range c.Members() {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// MemberByID returns the member with the given ID, or nil.
func (c *Cluster) MemberByID(id uint64) *Member {
	for _, m := range c.Members() {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// Endpoints returns the client URLs of the running voting members, in start
// order.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members() {
		if m.Running() && !m.IsLearner() {
			eps = append(eps, m.ClientURL)
		}
	}
	return eps
}

// Leader waits until every running voting member knows the same leader and
// that leader is one of them, and returns it. ctx bounds the wait.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var lead uint64
		agreed := true
		var voters []*Member
		for _, m := range c.Members() {
			s := m.server()
			if s == nil || m.IsLearner() {
				continue
			}
			voters = append(voters, m)
			l := uint64(s.Leader())
			if l == 0 || (lead != 0 && l != lead) {
				agreed = false
			}
			lead = l
		}
		if agreed && lead != 0 {
			for _, m := range voters {
				if m.ID == lead {
					return m, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for leader: %w", context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// TLSFiles returns the paths of the CA certificate and of RootUser's client
// certificate and key; all empty without Options.TLS.
func (c *Cluster) TLSFiles() (cacert, cert, key string) {
	return c.TLSFilesFor(RootUser)
}

// TLSFilesFor returns the paths of the CA certificate and of the client
// certificate (CN user) and key of RootUser or AliceUser; all empty without
// Options.TLS or for another user. With ClientCertAuth and auth enabled,
// etcd takes the certificate's CN as the user name when a client sends no
// password.
func (c *Cluster) TLSFilesFor(user string) (cacert, cert, key string) {
	if c.tls == nil || c.tls.ClientCert[user] == "" {
		return "", "", ""
	}
	return c.tls.CA, c.tls.ClientCert[user], c.tls.ClientKey[user]
}

// ClientConfig returns the client configuration for the given endpoints
// (default: Endpoints()) that this cluster needs: TLS with RootUser's
// client certificate, and RootUser's password with auth. Its logger
// discards everything.
func (c *Cluster) ClientConfig(endpoints ...string) clientv3.Config {
	return c.ClientConfigAs(RootUser, endpoints...)
}

// ClientConfigAs is ClientConfig for user RootUser or AliceUser: that user's
// client certificate with TLS, and that user's password with auth.
func (c *Cluster) ClientConfigAs(user string, endpoints ...string) clientv3.Config {
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if c.opts.Auth {
		cfg.Username = user
		cfg.Password = passwords[user]
	}
	if tc := c.clientTLS[user]; tc != nil {
		cfg.TLS = tc.Clone()
	}
	if c.opts.MaxRequestBytes > 0 {
		// The client's default send limit is 2 MiB.
		cfg.MaxCallSendMsgSize = max(2<<20, int(c.opts.MaxRequestBytes)+(1<<20))
	}
	return cfg
}

// Client returns a client of the given endpoints (default: Endpoints()) as
// RootUser, configured by ClientConfig. ctx bounds only the creation (with
// auth, the client logs in); the client outlives it. The caller closes the
// client.
func (c *Cluster) Client(ctx context.Context, endpoints ...string) (*clientv3.Client, error) {
	return c.ClientAs(ctx, RootUser, endpoints...)
}

// ClientAs is Client for user RootUser or AliceUser.
func (c *Cluster) ClientAs(ctx context.Context, user string, endpoints ...string) (*clientv3.Client, error) {
	cfg := c.ClientConfigAs(user, endpoints...)
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("new client: no running voting member")
	}
	if err := context.Cause(ctx); err != nil {
		return nil, fmt.Errorf("new client: %w", err)
	}
	if d, ok := ctx.Deadline(); ok {
		cfg.DialTimeout = min(cfg.DialTimeout, max(time.Until(d), time.Millisecond))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("new client of %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// ClientT returns Client(t.Context(), endpoints...), closed by t.Cleanup;
// it fails the test on error.
func (c *Cluster) ClientT(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := c.Client(t.Context(), endpoints...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// enableAuth creates RootUser and AliceUser and enables auth.
func (c *Cluster) enableAuth(ctx context.Context) error {
	cfg := c.ClientConfig()
	cfg.Username, cfg.Password = "", ""
	cli, err := clientv3.New(cfg)
	if err != nil {
		return fmt.Errorf("enable auth: %w", err)
	}
	defer func() { _ = cli.Close() }()
	steps := []struct {
		what string
		do   func() error
	}{
		{"add user root", func() error { _, err := cli.UserAdd(ctx, RootUser, RootPassword); return err }},
		{"grant role root", func() error { _, err := cli.UserGrantRole(ctx, RootUser, "root"); return err }},
		{"add role " + AliceRole, func() error { _, err := cli.RoleAdd(ctx, AliceRole); return err }},
		{"grant readwrite on all keys", func() error {
			_, err := cli.RoleGrantPermission(ctx, AliceRole, "\x00", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user alice", func() error { _, err := cli.UserAdd(ctx, AliceUser, AlicePassword); return err }},
		{"grant role " + AliceRole, func() error { _, err := cli.UserGrantRole(ctx, AliceUser, AliceRole); return err }},
		{"auth enable", func() error { _, err := cli.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("enable auth: %s: %w", s.what, err)
		}
	}
	return nil
}

// AddLearner adds a new member as a learner (MemberAddAsLearner through the
// running voters), starts it, and returns once it serves clients. ctx
// bounds the whole operation. Learners are not in Endpoints; promote one
// with MemberPromote once it has caught up.
func (c *Cluster) AddLearner(ctx context.Context) (*Member, error) {
	c.addMu.Lock()
	defer c.addMu.Unlock()
	if c.isClosed() {
		return nil, errors.New("add learner: cluster is closed")
	}
	cli, err := c.Client(ctx)
	if err != nil {
		return nil, fmt.Errorf("add learner: %w", err)
	}
	defer func() { _ = cli.Close() }()
	m, err := c.newMember()
	if err != nil {
		return nil, fmt.Errorf("add learner: %w", err)
	}
	resp, err := cli.MemberAddAsLearner(ctx, []string{m.PeerURL})
	if err != nil {
		return nil, fmt.Errorf("add learner: %w", err)
	}
	m.ID = resp.Member.ID
	var initial []string
	for _, pm := range resp.Members {
		name := pm.Name
		if pm.ID == resp.Member.ID {
			name = m.Name
		}
		for _, u := range pm.PeerURLs {
			initial = append(initial, name+"="+u)
		}
	}
	m.initialCluster = strings.Join(initial, ",")
	m.clusterState = "existing"
	m.learner = true
	c.rec.setID(m.Name, m.ID)
	if err := c.addMember(m); err != nil {
		return nil, fmt.Errorf("add learner %x: %w", m.ID, err)
	}
	if err := m.start(); err != nil {
		return m, fmt.Errorf("add learner: %w", err)
	}
	if err := m.waitReady(ctx); err != nil {
		return m, fmt.Errorf("add learner: %w", err)
	}
	return m, nil
}

// WaitCompacted waits until every running voting member has physically
// applied a compaction at rev or later, and until its dbSizeInUse shows the
// pages that compaction freed. ctx bounds the wait.
//
// It sends each member, through a client of that member only,
// Compact(rev, physical) three times. etcd answers each after that member's
// earlier compactions are done, and commits its backend
// ("required revision has been compacted" is the expected answer). bbolt
// keeps the pages freed by a commit pending while an older read transaction
// is open, and etcd counts them as free (dbSizeInUse) only at a later
// commit: without further writes, dbSizeInUse stays high after a compaction
// until about two more commits.
func (c *Cluster) WaitCompacted(ctx context.Context, rev int64) error {
	for _, ep := range c.Endpoints() {
		cli, err := c.Client(ctx, ep)
		if err != nil {
			return fmt.Errorf("wait compacted: %w", err)
		}
		for range 3 {
			_, err = cli.Compact(ctx, rev, clientv3.WithCompactPhysical())
			if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
				break
			}
			err = nil
		}
		_ = cli.Close()
		if err != nil {
			return fmt.Errorf("wait compacted at %s: %w", ep, err)
		}
	}
	return nil
}
