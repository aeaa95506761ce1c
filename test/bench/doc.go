// Package bench is the benchmark suite of etcd-defrag-agent: it measures,
// against real etcd processes, what the agents cost a cluster and what they
// buy it, and writes the results down as docs/BENCHMARKS.md with plots.
//
// The benchmarks are Go tests behind the build tag bench (make bench; make
// bench-quick runs each briefly), built on the end-to-end harness of
// test/e2e: every etcd member and every agent is a separate process. They
// record numbers and judge the goals in the report; no test fails
// on a timing. The package's untagged files are the parts that need no
// etcd — the results, the report and plot writers, the churn workload, the
// machine's description — and their tests run in make test.
//
//   - P1 (p1_test.go): a round of the agents (--once, all at once) against
//     back-to-back Defragment calls on identical copies of the data, at 3,
//     5 and 7 members, with a profile of where the round's time goes.
//   - P2 (p2_test.go): a steady client load during no defrag, the agents'
//     round, and an uncoordinated defrag of every member at once.
//   - P3 (p3_test.go): a churn against a small quota with no defrag, a
//     fixed schedule, and the agents.
//   - P4 (p4_test.go): an idle agent's memory and CPU, /metrics latency,
//     the rule's evaluation.
//   - P5 (p5_test.go): from NOSPACE to writable with the agents alone.
package bench
