// Package etcddata puts data into a real etcd through its client, for the
// test harnesses (internal/etcdtest's embedded clusters, test/e2e's member
// processes, test/bench): Fill writes, deletes and compacts until a
// database is fragmented, retrying etcd's transient errors; Hold keeps a
// snapshot stream open so that a defrag of that member lasts until it is
// released. It imports nothing of etcd's server.
package etcddata
