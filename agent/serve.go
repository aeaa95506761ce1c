package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-co-op/gocron/v2"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// retryPause is the pause before the announcement watch is set up again
// after it failed.
const retryPause = 2 * time.Second

// Serve runs cycles on the schedule, and as soon as the leader's agent
// announces that it waits for the followers, until ctx ends. Cycles never
// overlap. Between cycles it keeps the agent's session and announcement alive,
// so the leader's agent knows this one is there.
//
// When ctx ends, Serve stops the scheduler and waits for a running cycle to
// finish: waits in it end at once, but a running defrag is waited for (up to
// DefragTimeout) and then recorded and its lock released. Close the agent
// afterwards.
func (a *Agent) Serve(ctx context.Context, sched Schedule) error {
	def, opts, err := jobDefinition(sched)
	if err != nil {
		return err
	}
	s, err := gocron.NewScheduler(
		gocron.WithLogger(quietLogger{a.log.With("component", "scheduler")}),
		gocron.WithStopTimeout(a.cfg.DefragTimeout+2*a.cfg.CommandTimeout+lock.CleanupTimeout),
		gocron.WithLocation(a.cfg.Timezone.Loc()),
	)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	opts = append(opts,
		gocron.WithName("defrag-cycle"),
		gocron.WithContext(ctx),
		gocron.WithSingletonMode(gocron.LimitModeReschedule))
	job, err := s.NewJob(def, gocron.NewTask(func(ctx context.Context) { _ = a.RunOnce(ctx) }), opts...)
	if err != nil {
		return fmt.Errorf("schedule %+v: %w", sched, err)
	}
	a.mu.Lock()
	a.health = func() error {
		if _, err := job.NextRun(); err != nil {
			return fmt.Errorf("scheduler: %w", err)
		}
		return nil
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.health = errStopped
		a.mu.Unlock()
	}()

	s.Start()
	// Cycles the leader's agent asks for run here, not through gocron: a
	// request that comes while a cycle runs must give one more cycle after it
	// (that cycle may have announced its decision before the request), and
	// singleton mode would drop it. One slot: requests coalesce. RunOnce
	// serialises these with the scheduled cycles.
	requests := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-requests:
				if ctx.Err() == nil {
					_ = a.RunOnce(ctx)
				}
			}
		}
	})
	wg.Go(func() {
		a.keepPresent(ctx, func() {
			select {
			case requests <- struct{}{}:
			default: // one is queued already; it runs after the current cycle
			}
		})
	})
	<-ctx.Done()
	err = s.Shutdown()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("stop scheduler: %w", err)
	}
	return nil
}

func errStopped() error { return errors.New("scheduler stopped") }

// jobDefinition turns a Schedule into a gocron job.
func jobDefinition(sched Schedule) (gocron.JobDefinition, []gocron.JobOption, error) {
	switch {
	case sched.Every > 0 && sched.Cron == "":
		return gocron.DurationJob(sched.Every), []gocron.JobOption{gocron.WithStartAt(gocron.WithStartImmediately())}, nil
	case sched.Every == 0 && sched.Cron != "":
		return gocron.CronJob(sched.Cron, false), nil, nil
	}
	return nil, nil, fmt.Errorf("schedule: exactly one of every (%v) and cron (%q) must be set", sched.Every, sched.Cron)
}

// keepPresent keeps the agent's session and announcement alive between
// cycles, and calls requestCycle whenever the leader's agent announces that it
// waits for the followers to decide. It returns when ctx ends.
func (a *Agent) keepPresent(ctx context.Context, requestCycle func()) {
	var lastRequest int64
	for ctx.Err() == nil {
		anns, rev, replaced, err := a.prepare(ctx)
		if replaced {
			// A new session announces "starting", a promise that a cycle
			// follows at once: keep it, so the agent's decision is known
			// again (the leader's agent may wait for it).
			requestCycle()
		}
		if err != nil {
			a.log.Debug("not connected yet; retrying", "err", err)
			if !sleepCtx(ctx, retryPause) {
				return
			}
			continue
		}
		sess := a.presence.session()
		a.mu.Lock()
		self := a.memberID
		a.mu.Unlock()
		if sess == nil { // a learner or a dry run: nothing to announce, nothing to react to
			if !sleepCtx(ctx, a.cfg.LockTTL) {
				return
			}
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
				cancel()
			case <-wctx.Done():
			}
		}()
		leaderAsks := func(x coord.Announcement) {
			if x.Leader && x.State == coord.StatePending && x.Member != self && x.Revision > lastRequest {
				lastRequest = x.Revision
				a.presence.asked(x.Revision)
				a.log.Debug("the leader's agent asks followers to decide", "leader", fmt.Sprintf("%x", x.Member))
				requestCycle()
			}
		}
		// A request written before the watch's start is in the snapshot,
		// not in the watch: answer it unless this agent has announced
		// something since (make test-busy: a follower's agent whose watch
		// began just after the leader asked never answered, and the
		// leader's agent waited until --leader-wait-timeout).
		var mine int64
		for _, x := range anns {
			if x.Lease == sess.Lease() {
				mine = x.Revision
			}
		}
		for _, x := range anns {
			if x.Revision > mine {
				leaderAsks(x)
			}
		}
		err = a.board.WatchAnnouncements(wctx, rev, leaderAsks)
		cancel()
		if ctx.Err() == nil {
			a.log.Debug("announcement watch ended; setting it up again", "err", err)
			if !sleepCtx(ctx, retryPause) {
				return
			}
		}
	}
}

// prepare connects outside a cycle: it resolves the member and the cluster,
// makes sure of the session and the announcement, and returns the
// announcements and the revision to watch from, and whether it started a
// session that replaces a lost one.
func (a *Agent) prepare(ctx context.Context) (anns []coord.Announcement, rev int64, replaced bool, err error) {
	a.cycle.Lock()
	defer a.cycle.Unlock()
	st, err := a.localStatus(ctx)
	if err != nil {
		return nil, 0, false, err
	}
	members, err := a.memberList(ctx)
	if err != nil {
		return nil, 0, false, err
	}
	if err := a.refreshCluster(st.ID, members); err != nil {
		return nil, 0, false, err
	}
	// A learner takes no turns; a dry run writes nothing to etcd.
	if !st.IsLearner && !a.cfg.DryRun {
		if replaced, err = a.ensureSession(ctx, st); err != nil {
			return nil, 0, replaced, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	defer cancel()
	anns, rev, err = a.board.Announcements(ctx)
	return anns, rev, replaced, err
}

// sleepCtx sleeps for d or until ctx ends; it reports whether it slept.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// quietLogger passes gocron's warnings and errors on and drops its chatter.
type quietLogger struct{ l *slog.Logger }

func (q quietLogger) Debug(string, ...any)          {}
func (q quietLogger) Info(string, ...any)           {}
func (q quietLogger) Warn(msg string, args ...any)  { q.l.Warn(msg, args...) }  //nolint:sloglint // gocron's message
func (q quietLogger) Error(msg string, args ...any) { q.l.Error(msg, args...) } //nolint:sloglint // gocron's message
