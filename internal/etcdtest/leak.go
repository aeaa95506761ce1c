package etcdtest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// PeerConnLinger is how long goroutines of a closed cluster may live on.
//
// Every few seconds the leader of an embedded cluster asks its peers for
// their version over HTTP (keep-alive, on a transport etcd never closes).
// The peer's side of such a connection is stuck for up to 5 s
// (rafthttp.ConnReadTimeout): etcd's timeoutConn sets a fresh read deadline
// on every Read and so defeats net/http's abortPendingRead. Until then a few
// net/http goroutines of both sides remain, and Cluster.Close waits 1 s for
// that connection (embed's peer shutdown timeout). They end on their own.
const PeerConnLinger = 6 * time.Second

// FindLeaks reports goroutines left behind, for a TestMain after m.Run: it
// calls goleak.Find(opts...) until it finds none or timeout has passed, and
// returns the last error. Use a timeout of at least PeerConnLinger after the
// last Cluster.Close.
func FindLeaks(timeout time.Duration, opts ...goleak.Option) error {
	deadline := time.Now().Add(timeout)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Main runs a package's tests, then fails the package if goroutines outlive
// them (waiting up to two PeerConnLinger for those of closed clusters to
// end), and exits: the TestMain of every package that starts clusters,
// sessions or watches, which must all end.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := FindLeaks(2 * PeerConnLinger); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
