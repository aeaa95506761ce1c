// Package lock is how processes take turns through etcd: a Session (a lease
// kept alive, and the keys bound to it), a fair Mutex whose queue has the
// layout of etcd's concurrency.Mutex, and fencing — writes committed only
// while the mutex is held (Mutex.Fenced, Mutex.Release) or while a key is
// unchanged (PutIfUnchanged, DeleteIfUnchanged). It does not know what the
// turns are for; package coord lays out the agents' keys on top of it.
//
// The package talks to etcd through a Client: *clientv3.Client, or one that
// sends each request to a member that answers (the agent's). Sessions renew
// their lease with single requests rather than one keep-alive stream, and a
// wait on a watch reads again at least every Poll, because a stream or a
// watch through a member that stalls (it defragments) delivers nothing until
// that member answers. Every request the package sends is safe to send twice.
//
// Every call that blocks takes a context that bounds it. Cleanup after a
// failure runs on a fresh context bounded by CleanupTimeout, because the
// caller's context may be the one that ended.
package lock
