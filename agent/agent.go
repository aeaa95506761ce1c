package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/diskstat"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/steer"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// Config is what the agent needs to know; package main fills it from the
// command line, the environment and the configuration file.
type Config struct {
	// Rule decides whether a defrag of the member pays.
	Rule *rule.Rule
	// QuotaBytes is the space quota used when Status does not report one
	// (etcd before 3.6).
	QuotaBytes int64
	// Cooldown is the least time between two defrags of the member.
	Cooldown time.Duration
	// CommandTimeout bounds each single request to etcd.
	CommandTimeout time.Duration
	// DefragTimeout bounds a defrag: from the request until the member answers
	// a read again. The lock is held that long at most.
	DefragTimeout time.Duration
	// LockTimeout bounds the wait for the lock.
	LockTimeout time.Duration
	// LeaderWaitTimeout bounds the wait of the leader's agent for followers.
	LeaderWaitTimeout time.Duration
	// LockPrefix is where the agents' keys live.
	LockPrefix string
	// LockTTL is the session lease's time to live.
	LockTTL time.Duration
	// Compaction compacts before each defrag, keeping CompactionRetention
	// revisions. Under NOSPACE the agent compacts whatever Compaction says.
	Compaction          bool
	CompactionRetention int64
	// DryRun decides and reports, and never changes anything in etcd.
	DryRun bool
	// MoveLeader hands leadership to a healthy caught-up follower before the
	// leader's member is defragmented.
	MoveLeader bool
	// AutoDisalarm disarms NOSPACE once every member is below
	// DisalarmThreshold of its quota.
	AutoDisalarm      bool
	DisalarmThreshold float64
	// AllowQuorumLoss allows a defrag when the other voting members cannot
	// keep quorum alone (clusters of one or two voting members).
	AllowQuorumLoss bool
	// VerifyHashKV compares the member's HashKV with a peer's after a defrag.
	VerifyHashKV bool
	// MaxDefragDuration refuses a defrag forecast to take longer (0: off).
	MaxDefragDuration time.Duration
	// DataDir is etcd's data directory; when set, a defrag needs free space
	// on its filesystem of the in-use size times 1+DiskHeadroom.
	DataDir      string
	DiskHeadroom float64
	// Once marks a single-cycle run: on Close the session is left to expire
	// instead of revoked, so a leader's agent started at the same moment still
	// sees this agent's decision.
	Once bool
	// User is the etcd user the agent acts as ("" without auth), for the root
	// role check and messages.
	User string
	// Identity names this process in its announcements (host and PID).
	Identity string
	// Version is the agent's version.
	Version string
}

// Deps are the agent's collaborators.
type Deps struct {
	// Local is a client whose endpoints all reach this agent's member and no
	// other. The agent closes it.
	Local *clientv3.Client
	// Dial makes a client for other endpoints with Local's TLS and auth
	// settings, adding opts to its gRPC dial options. The agent closes what it
	// dials.
	Dial func(endpoints []string, opts ...grpc.DialOption) (*clientv3.Client, error)
	// Logger receives one event per decision; nil discards.
	Logger *slog.Logger
	// Registerer receives the agent's metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// DiskFree measures the free bytes of the filesystem holding a
	// directory; nil is statfs (diskstat.Free).
	DiskFree func(dir string) (int64, error)
}

// Agent defragments one etcd member when its rule says so, taking turns with
// the agents of the other members. Its methods are safe for concurrent use;
// cycles never overlap (RunOnce serialises them).
type Agent struct {
	cfg      Config
	local    *clientv3.Client
	dial     func([]string, ...grpc.DialOption) (*clientv3.Client, error)
	log      *slog.Logger
	metrics  *metrics
	now      func() time.Time
	diskFree func(string) (int64, error)
	keys     lock.Keys

	cycle sync.Mutex // held for a whole cycle

	// cluster reaches every voting member, one by one (peerClient) or
	// through whichever answers (clusterClient).
	cluster *steer.Client

	mu       sync.Mutex // guards the fields below
	memberID uint64
	session  *lock.Session
	nospace  *lock.Mutex
	last     Report
	closed   bool
	// idle is the agent's last idle announcement; leaderAsked the revision
	// of the latest request of the leader's agent seen (Serve).
	idle        idleAnnouncement
	leaderAsked int64
	sessions    int          // sessions started so far
	health      func() error // set by Serve: is the scheduler alive

	warnedVersion string // the etcd version last checked for known bugs
}

// New returns an agent for the member Deps.Local reaches. It does not contact
// etcd: the first cycle does.
func New(cfg Config, deps Deps) (*Agent, error) {
	var errs []error
	if cfg.Rule == nil {
		errs = append(errs, errors.New("agent: no rule"))
	}
	if deps.Local == nil || deps.Dial == nil {
		errs = append(errs, errors.New("agent: Local and Dial are required"))
	}
	for name, d := range map[string]time.Duration{
		"CommandTimeout": cfg.CommandTimeout, "DefragTimeout": cfg.DefragTimeout,
		"LockTimeout": cfg.LockTimeout, "LeaderWaitTimeout": cfg.LeaderWaitTimeout, "LockTTL": cfg.LockTTL,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("agent: %s must be positive", name))
		}
	}
	if cfg.QuotaBytes <= 0 {
		errs = append(errs, errors.New("agent: QuotaBytes must be positive"))
	}
	if cfg.DisalarmThreshold <= 0 || cfg.DisalarmThreshold > 1 {
		errs = append(errs, errors.New("agent: DisalarmThreshold must be in (0, 1]"))
	}
	if cfg.CompactionRetention < 1 {
		errs = append(errs, errors.New("agent: CompactionRetention must be at least 1"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:   cfg,
		local: deps.Local,
		dial:  deps.Dial,
		log:   deps.Logger,
		now:   deps.Now,
		keys:  lock.NewKeys(cfg.LockPrefix),
	}
	a.cluster = steer.New(func(urls []string) (*clientv3.Client, error) { return a.dial(urls) }, cfg.CommandTimeout/3)
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	a.diskFree = deps.DiskFree
	if a.diskFree == nil {
		a.diskFree = diskstat.Free
	}
	reg := deps.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	a.metrics = newMetrics(reg, cfg.Version, cfg.DataDir != "")
	return a, nil
}

// Close ends the agent: it takes the agent out of the NOSPACE queue, ends its
// session (revoked, or left to expire after --once) and closes every client.
// ctx bounds the etcd requests; Close waits for a running cycle to end first.
func (a *Agent) Close(ctx context.Context) error {
	a.cycle.Lock()
	defer a.cycle.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	var errs []error
	if a.session != nil {
		if a.cfg.Once {
			a.session.Abandon()
		} else if err := a.session.Close(ctx); err != nil {
			errs = append(errs, err)
		}
		a.session = nil
	}
	errs = append(errs, a.cluster.Close())
	errs = append(errs, a.local.Close())
	return errors.Join(errs...)
}

// LastReport returns the report of the last finished cycle (zero before the
// first).
func (a *Agent) LastReport() Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}
