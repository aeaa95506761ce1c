// Package e2e runs etcd members and etcd-defrag-agent processes as separate
// OS processes on loopback ports, so that SIGKILL, SIGSTOP, restarts and a
// full quota are real, and judges the agents from outside, by etcd's own
// account. It is the out-of-process counterpart of internal/etcdtest.
//
// It owns:
//
//   - the programs: etcd of each line in [Lines] (3.4 from Debian's
//     etcd-server package, 3.5 to 3.7 built from Go modules and cached, see
//     [EtcdBinary]) and the agent, built once per test binary ([Main]);
//   - processes: [Cluster] starts N etcd members ([Member]) and
//     [Cluster.StartAgent] one agent per member ([Agent]); both can be
//     killed, stopped, continued and restarted, and everything is torn down
//     by process group in t.Cleanup, with a final scan for orphans;
//   - the outside [Observer]: it samples every member's
//     etcd_disk_defrag_inflight and etcd_server_is_leader gauges every 20 ms,
//     reads the defrag intervals from the members' own log lines, and
//     watches the agents' announcements. At cleanup it fails the test on
//     two members defragmenting at once (I1) and on a leader whose agent took
//     its turn while a follower's agent was pending (I3); [Observer.Data] and
//     [Observer.CheckData] check that a defrag changed no data (I4);
//   - data helpers: [Cluster.Fill], [Cluster.FillUntilNoSpace],
//     [Cluster.Compact].
//
// The harness builds on Linux only (process groups, Pdeathsig, /proc). The
// scenarios live in _test.go files behind the build tag e2e, so that
// `go test ./...` does not run them; `make e2e` does. See README.md in this
// directory for the environment variables and the timings.
package e2e
