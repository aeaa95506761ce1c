//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

// Ports are probed below the kernel's ephemeral range (32768-60999 by
// default), so that no outgoing connection of any process holds a port
// between the probe and the moment etcd or an agent binds it.
const (
	portLow  = 20000
	portHigh = 32000
)

// portRegistry remembers every port this process has handed out, so that
// clusters started concurrently never get the same port, and a stopped
// member or agent can be restarted on its ports. Ports are a process-wide
// resource; this is the package's only mutable package-level state besides
// the binary cache (see binaries.go).
var portRegistry = struct {
	mu   sync.Mutex
	used map[int]bool
}{used: make(map[int]bool)}

// freePort returns a loopback TCP port that is free now and that no other
// caller in this process has been given.
func freePort() (int, error) {
	for range 200 {
		port := portLow + rand.IntN(portHigh-portLow)
		portRegistry.mu.Lock()
		taken := portRegistry.used[port]
		if !taken {
			portRegistry.used[port] = true
		}
		portRegistry.mu.Unlock()
		if taken {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use by another process; stays registered
		}
		if err := l.Close(); err != nil {
			return 0, fmt.Errorf("close port probe: %w", err)
		}
		return port, nil
	}
	return 0, errors.New("no free port after 200 probes")
}
