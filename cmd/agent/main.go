// Command etcd-defrag-agent runs beside one etcd member and defragments it
// when its rule says a defrag pays, taking turns with the agents of the other
// members through etcd: one member at a time, followers first, the leader
// last. See the README for the configuration, the metrics and the protocol.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is bad input: a flag, a variable, the configuration file, the
// rule, a certificate. It exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCode prints err and maps it to the process's exit code: 0 fine, 1 a
// runtime failure, 2 bad configuration or usage.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "etcd-defrag-agent: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}
