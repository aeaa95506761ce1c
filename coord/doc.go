// Package coord is the agents' shared state in etcd: the key layout under
// the lock prefix and the records the protocol keeps there — who announces
// what, which member is being defragmented, what was done last — over the
// sessions, mutexes and fencing of package lock. Package agent reads and
// writes these keys only through it.
//
// The layout under a prefix P (default "/etcd-defrag-agent/"):
//
//	P lock/<lease>             the mutex queue of the turns; the key with the
//	                           oldest create revision holds the lock (the layout
//	                           of etcd's concurrency.Mutex, so `etcdctl lock P lock`
//	                           takes the same lock and pauses every agent)
//	P nospace/<lease>          a second queue, joined in advance while the cluster
//	                           is writable, so it can be taken under NOSPACE
//	P agents/<member>/<lease>  one announcement per running agent, bound to its
//	                           session lease: what it is doing now
//	P defrag/<member>          written under the lock just before a member is
//	                           defragmented, removed once it answers again; not
//	                           leased, so it outlives an agent that dies mid-defrag
//	P last/<member>            the record of the member's last defragmentation
//	P trend/<member>           samples of the member's sizes, so that its growth
//	                           rates survive a restart of its agent
//
// Member IDs are written in hexadecimal as etcdctl prints them. Every call
// that blocks takes a context that bounds it; every request is safe to send
// twice (see lock.Client).
package coord
