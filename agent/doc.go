// Package agent is the defrag sidecar's cycle: it reads its own etcd member's
// status, decides with the rule whether a defragmentation pays, takes its turn
// with the agents of the other members through package lock — followers first,
// the leader last — checks that the cluster can spare the member, defragments
// it, verifies the result and records it. It also brings a cluster under the
// NOSPACE alarm back to writable.
//
// The cycle is Agent.RunOnce; Serve only triggers it on a schedule and when the
// leader's agent asks the followers to decide. Agent.Handler serves /healthz,
// /readyz and /status. The package reads no flags and no files: package main
// builds a Config and the etcd clients and passes them in.
package agent
