// Command demo runs etcd-defrag-agent on an embedded etcd cluster, in one
// process and in a temporary directory: it starts the members on loopback,
// fragments their databases with real data, starts one agent beside each
// member at the same instant, tells the round as it happens, and checks from
// etcd's own log lines that the members were defragmented one at a time, the
// leader last. Nothing stays running or on disk afterwards.
//
//	go run ./cmd/demo [-members 3] [-keys 40000] [-value-size 4096] [-timeout 45s] [-v]
//
// The embedded etcd server is linked into this command only, never into the
// agent's binary.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is a bad flag or argument. It exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCode prints err and maps it to the exit code: 0 fine (or -help), 1 the
// demo failed or was interrupted, 2 bad usage.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(stderr, "demo: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// options are the demo's flags.
type options struct {
	members   int
	keys      int
	valueSize int
	garbage   float64
	timeout   time.Duration
	verbose   bool
}

// Bounds of the flags.
const (
	minMembers   = 3 // fewer voting members cannot keep quorum while one defragments
	maxMembers   = 7
	maxValueSize = 512 << 10 // Fill sends bigger values alone, above etcd's default request limit
	// defaultKeys keys of 4 KiB, 70% deleted, leave over 100 MiB to reclaim
	// in each member: the default rule fires.
	defaultKeys = 40000
)

// parseFlags parses the command line; errors are usageErrors, -help is
// flag.ErrHelp.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.members, "members", 3, fmt.Sprintf("number of etcd members, %d to %d", minMembers, maxMembers))
	fs.IntVar(&o.keys, "keys", defaultKeys, "number of keys written before the round")
	fs.IntVar(&o.valueSize, "value-size", 4096, "size of each value in bytes")
	fs.Float64Var(&o.garbage, "garbage", 0.7, "fraction of the keys deleted (and compacted) again, 0 to 1")
	fs.DurationVar(&o.timeout, "timeout", 45*time.Second, "how long the agents may take to defragment every member")
	fs.BoolVar(&o.verbose, "v", false, "also show the agents' own log events (on stderr)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./cmd/demo [flags]\n\n"+
			"Starts an embedded etcd cluster, fragments it, runs one etcd-defrag-agent per\n"+
			"member and shows them defragment the members one at a time, the leader last.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err}
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q: the demo takes flags only", fs.Arg(0)))
	}
	if o.members < minMembers || o.members > maxMembers {
		errs = append(errs, fmt.Errorf("-members %d: want %d to %d", o.members, minMembers, maxMembers))
	}
	if o.keys <= 0 {
		errs = append(errs, fmt.Errorf("-keys %d: want more than 0", o.keys))
	}
	if o.valueSize <= 0 || o.valueSize > maxValueSize {
		errs = append(errs, fmt.Errorf("-value-size %d: want 1 to %d", o.valueSize, maxValueSize))
	}
	if !(o.garbage >= 0 && o.garbage <= 1) {
		errs = append(errs, fmt.Errorf("-garbage %v: want 0 to 1", o.garbage))
	}
	if o.timeout <= 0 {
		errs = append(errs, fmt.Errorf("-timeout %v: want a positive duration", o.timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return o, usageError{err}
	}
	return o, nil
}

// run is the whole demo. ctx ends it early (Ctrl-C); everything started is
// stopped and removed either way.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	d := &demo{opts: o, out: &lockedWriter{w: stdout}, errOut: &lockedWriter{w: stderr}}
	err = d.run(ctx)
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return err
}
