package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
)

// portRegistry remembers every port this process has handed out to a member.
//
// It is the package's only package-level mutable state, on purpose: the
// kernel may give the same free port to two probes made one after the other
// (the probe's listener is closed before etcd binds the port), and clusters
// started concurrently in one test binary would then collide. A port handed
// out once is never handed out again in this process, so a stopped member can
// also be restarted on its ports without another cluster taking them.
var portRegistry = struct {
	mu   sync.Mutex
	used map[int]bool
}{used: make(map[int]bool)}

// freePort returns a loopback TCP port that is free now and that no other
// member of this process has been given.
func freePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("probe free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if err := l.Close(); err != nil {
			return 0, fmt.Errorf("close port probe: %w", err)
		}
		portRegistry.mu.Lock()
		taken := portRegistry.used[port]
		portRegistry.used[port] = true
		portRegistry.mu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, errors.New("no free port after 100 probes")
}

// isAddrInUse reports whether err says that a port was taken, which can
// happen when another process binds a probed port before etcd does.
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE)
}
