package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/config"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// closeTimeout bounds the shutdown of each agent.
const closeTimeout = 10 * time.Second

// goneWait bounds the wait for the watch to report the agents' sessions gone.
const goneWait = 2 * time.Second

// roundResult is what the round left for the summary.
type roundResult struct {
	t0     time.Time         // the instant every agent started
	leader *etcdtest.Member  // the leader at that instant
	agents []*agent.Agent    // in member order
	ds     []etcdtest.Defrag // every defrag etcd logged, by start
}

// demoAgent is one agent beside one member.
type demoAgent struct {
	m *etcdtest.Member
	a *agent.Agent
}

// agentConfig is the production default configuration (config.Default), with
// the given rule.
func agentConfig(r *rule.Rule, name string) (agent.Config, agent.Schedule) {
	def := config.Default()
	cfg := def.Config
	cfg.Rule, cfg.Identity, cfg.Version = r, "demo/"+name, "demo"
	return cfg, def.Schedule
}

// newAgents makes one agent per member, each logging to its own handler.
func (d *demo) newAgents(r *rule.Rule, n *narrator) ([]demoAgent, agent.Schedule, error) {
	var out []demoAgent
	var sched agent.Schedule
	for _, m := range d.c.Members() {
		cfg, s := agentConfig(r, m.Name)
		sched = s
		h := &agentHandler{name: m.Name, n: n}
		if d.opts.verbose {
			h.raw = slog.NewTextHandler(d.errOut, &slog.HandlerOptions{Level: slog.LevelDebug}).
				WithAttrs([]slog.Attr{slog.String("agent", m.Name)})
		}
		local, err := clientv3.New(d.c.ClientConfig(m.ClientURL))
		if err != nil {
			return out, sched, fmt.Errorf("client of %s: %w", m.Name, err)
		}
		a, err := agent.New(cfg, agent.Deps{
			Local: local,
			Dial: func(eps []string, opts ...grpc.DialOption) (*clientv3.Client, error) {
				cc := d.c.ClientConfig(eps...)
				cc.DialOptions = append(cc.DialOptions, opts...)
				return clientv3.New(cc)
			},
			Logger: slog.New(h),
		})
		if err != nil {
			_ = local.Close()
			return out, sched, fmt.Errorf("agent of %s: %w", m.Name, err)
		}
		out = append(out, demoAgent{m: m, a: a})
	}
	return out, sched, nil
}

// round starts one agent per member at the same instant, tells what happens
// until every member was defragmented (or the timeout, or ctx, ends it), and
// stops the agents again.
func (d *demo) round(ctx context.Context, r *rule.Rule) (res roundResult, err error) {
	n := newNarrator(d.out)
	defer n.Close()
	agents, sched, err := d.newAgents(r, n)
	defer func() {
		// Stop the agents whatever happened; Close waits for a running cycle.
		for _, x := range agents {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			if cerr := x.a.Close(cctx); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close the agent of %s: %w", x.m.Name, cerr))
			}
			cancel()
		}
	}()
	if err != nil {
		return res, err
	}
	for _, x := range agents {
		res.agents = append(res.agents, x.a)
	}
	keys := coord.NewKeys(config.Default().LockPrefix)
	obs, err := newObserver(ctx, d, n, keys)
	if err != nil {
		return res, err
	}
	octx, ostop := context.WithCancel(context.WithoutCancel(ctx))
	observed := make(chan struct{})
	go func() {
		defer close(observed)
		obs.run(octx)
	}()
	defer func() {
		ostop()
		<-observed
	}()

	def := config.Default()
	d.printf("\nStarting %d agents at the same instant: agent.Serve(schedule %s, first cycle at once), production defaults\n"+
		"(cooldown %v, lock TTL %v, leader wait up to %v, HashKV check after each defrag), under %s.\n",
		len(agents), def.Schedule, def.Cooldown, def.LockTTL, def.LeaderWaitTimeout, keys.Prefix())
	d.printf("What happens, told from three sources (times since the start):\n" +
		"  etcd  = etcd's own log lines (the backend's \"defragmenting\" and \"finished defragmenting directory\")\n" +
		"  keys  = a watch on the agents' keys in etcd (announcements, the lock's queue)\n" +
		"  agent = the agents' own log events\n")

	if res.leader, err = d.c.Leader(ctx); err != nil {
		return res, err
	}
	sctx, scancel := context.WithCancel(ctx)
	served := make(chan error, len(agents))
	start := make(chan struct{})
	for _, x := range agents {
		go func() {
			<-start
			served <- x.a.Serve(sctx, sched)
		}()
	}
	res.t0 = time.Now()
	n.start(res.t0)
	close(start)
	n.say(res.t0, "demo", "%d agents start; %s leads", len(agents), res.leader.Name)

	timer := time.NewTimer(d.opts.timeout)
	defer timer.Stop()
	select {
	case <-obs.complete():
		n.say(time.Now(), "demo", "every member was defragmented and every agent is idle again: stopping the agents")
	case <-timer.C:
		err = fmt.Errorf("not every member was defragmented within -timeout %v", d.opts.timeout)
		n.say(time.Now(), "demo", "timeout after %v: stopping the agents", d.opts.timeout)
	case <-ctx.Done():
		err = ctx.Err()
		n.say(time.Now(), "demo", "interrupted: stopping the agents (a running defrag is waited for)")
	}
	scancel()
	for range agents {
		if serr := <-served; serr != nil {
			err = errors.Join(err, fmt.Errorf("serve: %w", serr))
		}
	}
	for _, x := range agents {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		if cerr := x.a.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close the agent of %s: %w", x.m.Name, cerr))
		}
		cancel()
	}
	select {
	case <-obs.gone():
	case <-time.After(goneWait):
	}
	res.ds = d.c.Defrags()
	return res, err
}
