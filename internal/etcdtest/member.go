package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"sync"

	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Timings and sizes of every member, with the reasons.
const (
	// tickMs and electionMs: a heartbeat every 10 ms and an election
	// timeout of 10 ticks, like etcd's own integration framework
	// (tests/framework/integration: TickDuration 10ms, ElectionTicks 10).
	// A leader is elected in about 0.1-0.3 s; the randomised timeout
	// ([100, 200) ms) with pre-vote keeps leaders stable on a loaded
	// 2-core machine under -race, because a defrag blocks the backend, not
	// raft's heartbeats.
	tickMs     = 10
	electionMs = 100
	// snapshotCount: a raft snapshot (and in-memory log truncation) every
	// 1000 applied entries instead of 10000: Fill sends large Txns and
	// three members in one process keep their raft logs in memory.
	snapshotCount = 1000
	// snapshotCatchUpEntries: entries kept after a snapshot for slow
	// followers and new learners (etcd's default is 5000).
	snapshotCatchUpEntries = 500
	// compactionBatchLimit: revisions deleted per compaction batch (etcd's
	// default is 1000, with a 10 ms pause and a commit after each batch):
	// compacting 200k revisions takes 0.4 s instead of 3.7 s.
	compactionBatchLimit = 10000
	// bcryptCost is bcrypt.MinCost: etcd checks passwords with bcrypt on
	// every Authenticate, and the default cost (10) takes ~100 ms per check
	// under -race.
	bcryptCost = 4
)

// Member is one embedded etcd member of a Cluster.
type Member struct {
	// Name is the member's name: "m0", "m1", … in start order.
	Name string
	// ID is the member's ID in the cluster.
	ID uint64
	// ClientURL is the URL clients use: http://127.0.0.1:<port>, or https
	// with Options.TLS.
	ClientURL string
	// PeerURL is the URL peers use (always plain http).
	PeerURL string
	// Dir is the member's data directory. It is kept by Stop and removed by
	// Cluster.Close.
	Dir string
	// Etcd is the running embedded member; nil while stopped. Stop and
	// Restart replace it: do not read it concurrently with them.
	Etcd *embed.Etcd

	c              *Cluster
	initialCluster string
	clusterState   string

	life    sync.Mutex // serialises start and Stop
	mu      sync.Mutex // guards Etcd (for readers inside this package) and learner; held briefly
	learner bool       // last known learner status
}

// server returns the member's etcd server, or nil while it is stopped.
func (m *Member) server() *etcdserver.EtcdServer {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Etcd == nil {
		return nil
	}
	return m.Etcd.Server
}

// Running reports whether the member is started (it may not be ready yet).
func (m *Member) Running() bool { return m.server() != nil }

// IsLearner reports whether the member is a learner, as the member itself
// sees the cluster's membership; while it is stopped, as last seen.
func (m *Member) IsLearner() bool {
	s := m.server()
	m.mu.Lock()
	defer m.mu.Unlock()
	if s != nil {
		m.learner = s.IsLearner()
	}
	return m.learner
}

// config returns the embed configuration of the member. A fresh one is
// needed for every start: embed keeps state in it.
func (m *Member) config() (*embed.Config, error) {
	c := m.c
	cu, err := url.Parse(m.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("parse client url: %w", err)
	}
	pu, err := url.Parse(m.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("parse peer url: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.memberLogger(m.Name))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = m.initialCluster
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = m.clusterState
	cfg.TickMs = tickMs
	cfg.ElectionMs = electionMs
	cfg.SnapshotCount = snapshotCount
	cfg.SnapshotCatchUpEntries = snapshotCatchUpEntries
	cfg.AutoCompactionRetention = "0" // no auto-compaction
	cfg.BcryptCost = bcryptCost
	cfg.CompactionBatchLimit = compactionBatchLimit
	cfg.EnableGRPCGateway = false // clients use gRPC; /health still works
	// etcd's default (true) refuses MemberAdd, even of a learner, until
	// every voter has been connected to the leader for 5 s
	// ("etcdserver: unhealthy cluster"); AddLearner right after Start
	// would wait for that.
	cfg.StrictReconfigCheck = false
	cfg.QuotaBackendBytes = c.opts.QuotaBackendBytes
	if c.opts.MaxTxnOps > 0 {
		cfg.MaxTxnOps = c.opts.MaxTxnOps
	}
	if c.opts.MaxRequestBytes > 0 {
		cfg.MaxRequestBytes = c.opts.MaxRequestBytes
	}
	cfg.UnsafeNoFsync = c.opts.UnsafeNoFsync
	if c.tls != nil {
		cfg.ClientTLSInfo.CertFile = c.tls.ServerCert
		cfg.ClientTLSInfo.KeyFile = c.tls.ServerKey
		cfg.ClientTLSInfo.TrustedCAFile = c.tls.CA
		cfg.ClientTLSInfo.ClientCertAuth = true
	}
	return cfg, nil
}

// memberLogger returns the zap logger of one member: it records the
// member's defrag entries and, with Options.Logger, tees everything to it
// with a "member" field.
func (c *Cluster) memberLogger(name string) *zap.Logger {
	capture := &captureCore{rec: c.rec, member: name}
	if c.opts.Logger == nil {
		return zap.New(capture)
	}
	return c.opts.Logger.WithOptions(zap.WrapCore(func(core zapcore.Core) zapcore.Core {
		return zapcore.NewTee(capture, core)
	})).With(zap.String("member", name))
}

// start starts the member's embedded etcd; it does not wait until it is
// ready. The caller holds no lock.
func (m *Member) start() error {
	cfg, err := m.config()
	if err != nil {
		return err
	}
	m.life.Lock()
	defer m.life.Unlock()
	if m.Running() {
		return fmt.Errorf("member %s is running", m.Name)
	}
	// Checked under m.life: Close marks the cluster closed before it stops
	// the members (taking m.life), so no member is left running.
	if m.c.isClosed() {
		return fmt.Errorf("start member %s: cluster is closed", m.Name)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start member %s: %w", m.Name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Etcd = e
	if m.ID == 0 { // set once: readers use m.ID without a lock
		m.ID = uint64(e.Server.MemberID())
		m.c.rec.setID(m.Name, m.ID)
	}
	return nil
}

// waitReady waits until the member serves clients: it has joined the
// cluster and published its attributes through raft, which needs a quorum.
// ctx bounds the wait.
func (m *Member) waitReady(ctx context.Context) error {
	m.mu.Lock()
	e := m.Etcd
	m.mu.Unlock()
	if e == nil {
		return fmt.Errorf("member %s is stopped", m.Name)
	}
	select {
	case <-e.Server.ReadyNotify():
		m.IsLearner() // refresh the cached status
		return nil
	case err, ok := <-e.Err():
		if !ok { // closed by Stop
			return fmt.Errorf("member %s stopped before it was ready", m.Name)
		}
		return fmt.Errorf("member %s: %w", m.Name, err)
	case <-e.Server.StopNotify():
		return fmt.Errorf("member %s stopped before it was ready", m.Name)
	case <-ctx.Done():
		return fmt.Errorf("wait for member %s to be ready: %w", m.Name, context.Cause(ctx))
	}
}

// Stop stops the member at once (HardStop: no leadership transfer, like a
// crash) and closes its listeners; it takes about 1 s (see PeerConnLinger).
// The data directory is kept for Restart. Stopping a stopped member does
// nothing.
//
// An embedded member cannot be killed mid-defrag: Stop waits until a
// running defragmentation has finished. Kill a separate etcd process for
// that.
func (m *Member) Stop() {
	m.life.Lock()
	defer m.life.Unlock()
	m.mu.Lock()
	e := m.Etcd
	m.Etcd = nil // stopping: no longer among the running members
	if e != nil {
		m.learner = e.Server.IsLearner()
	}
	m.mu.Unlock()
	if e == nil {
		return
	}
	e.Server.HardStop()
	e.Close()
}

// Restart starts a stopped member again with the same data directory and
// ports, and waits until it serves clients, which needs a quorum of the
// cluster. ctx bounds the wait; when it ends first, the member is stopped
// again.
func (m *Member) Restart(ctx context.Context) error {
	if err := m.start(); err != nil {
		return err
	}
	if err := m.waitReady(ctx); err != nil {
		m.Stop()
		return err
	}
	return nil
}
