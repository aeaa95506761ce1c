package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/config"
)

// shutdownTimeout bounds the work after the agent stopped: leaving the
// queues, revoking the session, stopping the HTTP server.
const shutdownTimeout = 10 * time.Second

// run is the whole program: parse, load, validate, then one cycle (--once) or
// the scheduled daemon until ctx ends.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlagSet(config.Default())
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: etcd-defrag-agent [flags]\n\nRuns beside one etcd member and defragments it when its rule says so,\none member of the cluster at a time, the leader last.\n\nFlags:\n%s", fs.FlagUsages())
			return nil
		}
		return usageError{fmt.Errorf("%w (see --help)", err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q: the agent takes flags only", fs.Arg(0))}
	}
	ver := resolveVersion()
	if v, _ := fs.GetBool(config.FlagVersion); v {
		fmt.Fprintf(stdout, "etcd-defrag-agent %s\n", ver)
		return nil
	}
	cfg, err := config.Load(config.Sources{Flags: fs, Environ: environ})
	if err != nil {
		return usageError{err}
	}
	clientCfg, user, err := etcdClientConfig(cfg)
	if err != nil {
		return usageError{err}
	}
	if v, _ := fs.GetBool(config.FlagCheckConfig); v {
		fmt.Fprintf(stdout, "configuration is valid\n")
		return nil
	}

	logger := newLogger(cfg.Log, stderr)
	logger.Info("starting", "version", ver, "endpoints", cfg.Endpoints, "rule", cfg.Rule.String(),
		"schedule", cfg.Schedule.String(), "once", cfg.Once, "dry_run", cfg.DryRun, "user", user)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	local, err := dialEtcd(clientCfg, cfg.Endpoints, logger)
	if err != nil {
		return usageError{err}
	}
	host, _ := os.Hostname()
	// What the agent needs besides its keys (cfg.User is the user key, the
	// name before a ":").
	cfg.Config.User, cfg.Identity, cfg.Version = user, fmt.Sprintf("%s/%d", host, os.Getpid()), ver
	a, err := agent.New(cfg.Config, agent.Deps{
		Local: local,
		Dial: func(eps []string, opts ...grpc.DialOption) (*clientv3.Client, error) {
			return dialEtcd(clientCfg, eps, logger, opts...)
		},
		Logger:     logger,
		Registerer: reg,
	})
	if err != nil {
		_ = local.Close()
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := a.Close(cctx); err != nil {
			logger.Warn("closing the agent", "err", err)
		}
	}()

	srvErr := make(chan error, 1)
	if cfg.Web.ListenAddress != "" {
		srv := &http.Server{
			Handler:           a.Handler(reg),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.With("component", "web").Handler(), slog.LevelWarn),
		}
		go func() {
			addrs := []string{cfg.Web.ListenAddress}
			webCfg := cfg.Web.ConfigFile
			err := web.ListenAndServe(srv, &web.FlagConfig{WebListenAddresses: &addrs, WebConfigFile: &webCfg}, logger.With("component", "web"))
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				srvErr <- fmt.Errorf("--web.listen-address %s: %w", cfg.Web.ListenAddress, err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}

	if cfg.Once {
		err := a.RunOnce(ctx)
		if errors.Is(err, agent.ErrMemberUnreachable) {
			// No later cycle will retry: the endpoints or the credentials
			// are wrong (the daemon keeps trying instead).
			return usageError{fmt.Errorf("--endpoints %s: %w", strings.Join(cfg.Endpoints, ","), err)}
		}
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- a.Serve(sctx, cfg.Schedule) }()
	select {
	case err := <-srvErr:
		cancel()
		if serr := <-served; serr != nil {
			logger.Warn("stopping the scheduler", "err", serr)
		}
		return err
	case err := <-served:
		return err
	case <-ctx.Done():
		logger.Info("stopping: waiting for a running cycle to finish")
		cancel()
		return <-served
	}
}

// newLogger builds the one logger of the process.
func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if strings.EqualFold(c.Format, "json") {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
