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

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/diskstat"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/steer"
)

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
	local    memberClient
	dial     func([]string, ...grpc.DialOption) (*clientv3.Client, error)
	log      *slog.Logger
	metrics  *metrics
	now      func() time.Time
	diskFree func(string) (int64, error)

	// cluster reaches every voting member, one by one (peerClient) or
	// through whichever answers; board is the agents' keys through it.
	cluster  *steer.Client
	board    *coord.Board
	presence presence
	trend    *trend // the member's sizes and Raft index across reads

	cycle sync.Mutex // held for a whole cycle

	mu            sync.Mutex // guards the fields below
	memberID      uint64
	last          Report
	closed        bool
	health        func() error // set by Serve: is the scheduler alive
	warnedVersion string       // the etcd version last checked for known bugs
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
	}
	a.cluster = steer.New(func(urls []string) (*clientv3.Client, error) { return a.dial(urls) }, cfg.CommandTimeout/3)
	a.board = coord.NewBoard(a.cluster, cfg.LockPrefix)
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
	window := cfg.GrowthWindow
	if window <= 0 {
		window = DefaultGrowthWindow
	}
	a.trend = newTrend(window)
	return a, nil
}

// Close ends the agent: it ends its session (revoked, which takes its keys
// and its place in the NOSPACE queue with it, or left to expire after --once)
// and closes every client.
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
	errs = append(errs, a.presence.close(ctx, a.cfg.Once))
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
