// Package etcdtest starts real etcd clusters inside the current process,
// for the package tests of lock and agent and for the demo program.
//
// It owns:
//
//   - the lifecycle of embedded multi-member clusters (go.etcd.io/etcd/server/v3/embed)
//     on loopback ports in temporary directories: [Start], [New], [Cluster.Close],
//     stopping and restarting single members ([Member.Stop], [Member.Restart]) and
//     adding learners ([Cluster.AddLearner]);
//   - the optional client TLS material (a generated CA and certificates, see
//     [Cluster.TLSFiles]) and the optional auth setup (users [RootUser] and
//     [AliceUser], see [Options.Auth]);
//   - etcd's own account of defragmentations: every member logs through its own
//     zap logger, and the backend's "defragmenting" and "finished defragmenting
//     directory" lines are recorded as [Defrag] intervals per member
//     ([Cluster.Defrags], [Cluster.WaitDefrags], [Overlaps]). In one process the
//     Prometheus metrics of embedded members are global (etcd_disk_defrag_inflight
//     is shared by all members), so the log lines are the only per-member source;
//   - [Fill], which creates real fragmentation in a cluster through a client.
//
// The core API takes a context and returns errors, so that programs (cmd/demo)
// can use it; [New] and [Cluster.ClientT] are thin testing.TB wrappers.
//
// The package's only package-level mutable state is the registry of handed-out
// ports (see ports.go): ports are a process-wide resource, and clusters started
// concurrently in one test binary must not be given the same port between the
// moment it is probed and the moment etcd binds it.
package etcdtest
