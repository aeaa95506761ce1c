// Package lock is how the agents of one etcd cluster take turns, through etcd
// itself. It owns the keys under the lock prefix and nothing else: it does not
// know what the turns are for.
//
// The layout under a prefix P (default "/etcd-defrag-agent/"):
//
//	P lock/<lease>             the mutex queue; the key with the oldest create
//	                           revision holds the lock (the layout of etcd's
//	                           concurrency.Mutex, so `etcdctl lock P lock` takes
//	                           the same lock and pauses every agent)
//	P nospace/<lease>          a second queue, joined in advance while the cluster
//	                           is writable, so it can be taken under NOSPACE
//	P agents/<member>/<lease>  one announcement per running agent, bound to its
//	                           session lease: what it is doing now
//	P defrag/<member>          written under the lock just before a member is
//	                           defragmented, removed once it answers again; not
//	                           leased, so it outlives an agent that dies mid-defrag
//	P last/<member>            the record of the member's last defragmentation
//
// Member IDs are written in hexadecimal as etcdctl prints them.
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
