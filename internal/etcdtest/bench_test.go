package etcdtest_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// BenchmarkStartClose measures starting and closing a 3-member cluster.
// Run with -benchtime=5x or so.
func BenchmarkStartClose(b *testing.B) {
	var up, down time.Duration
	for b.Loop() {
		start := time.Now()
		c, err := etcdtest.Start(b.Context(), etcdtest.Options{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		up += time.Since(start)
		start = time.Now()
		c.Close()
		down += time.Since(start)
	}
	b.ReportMetric(up.Seconds()/float64(b.N), "start_s/op")
	b.ReportMetric(down.Seconds()/float64(b.N), "close_s/op")
}

type fillCase struct {
	name      string
	opts      etcddata.FillOptions
	maxTxnOps uint
}

var fillCases = []fillCase{
	{"a_20k_x_1KiB", etcddata.FillOptions{Keys: 20_000, ValueSize: 1 << 10, Garbage: 0.5}, 0},
	{"b_200k_x_100B", etcddata.FillOptions{Keys: 200_000, ValueSize: 100, Garbage: 0.5}, 0},
	{"c_100_x_1MiB", etcddata.FillOptions{Keys: 100, ValueSize: 1 << 20, Garbage: 0.5}, 0},
	// A defrag of >= 1 s on a 2-core machine: ~270 MiB in use.
	{"d_300_x_1MiB", etcddata.FillOptions{Keys: 300, ValueSize: 1 << 20, Garbage: 0.1}, 0},
	// Bigger Txns are no faster (4.1-7.7 s vs 3.5-7.9 s on case b).
	{"b_200k_x_100B_1000ops", etcddata.FillOptions{Keys: 200_000, ValueSize: 100, Garbage: 0.5, OpsPerTxn: 1000}, 1000},
}

// BenchmarkFillDefrag measures Fill on a 3-member cluster and then one
// Defragment of one follower, with and without fsync. Run with
// -benchtime=1x; ETCDTEST_BENCH_CASES=a,c selects cases by prefix.
func BenchmarkFillDefrag(b *testing.B) {
	for _, fc := range fillCases {
		if sel := os.Getenv("ETCDTEST_BENCH_CASES"); sel != "" && !containsPrefix(sel, fc.name) {
			continue
		}
		for _, nofsync := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/nofsync=%v", fc.name, nofsync), func(b *testing.B) {
				for b.Loop() {
					benchFillDefrag(b, fc, nofsync)
				}
			})
		}
	}
}

func containsPrefix(list, name string) bool {
	for i := 0; i < len(list); {
		j := i
		for j < len(list) && list[j] != ',' {
			j++
		}
		if p := list[i:j]; p != "" && len(name) >= len(p) && name[:len(p)] == p {
			return true
		}
		i = j + 1
	}
	return false
}

func benchFillDefrag(b *testing.B, fc fillCase, nofsync bool) {
	ctx := b.Context()
	c, err := etcdtest.Start(ctx, etcdtest.Options{Dir: b.TempDir(), UnsafeNoFsync: nofsync, QuotaBackendBytes: 8 << 30, MaxTxnOps: fc.maxTxnOps})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cli, err := c.Client(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	res, err := etcddata.Fill(ctx, cli, fc.opts)
	if err != nil {
		b.Fatal(err)
	}
	waitStart := time.Now()
	if err := c.WaitCompacted(ctx, res.Revision); err != nil {
		b.Fatal(err)
	}
	waitCompacted := time.Since(waitStart)
	lead, err := c.Leader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var follower *etcdtest.Member
	for _, m := range c.Members() {
		if m != lead {
			follower = m
			break
		}
	}
	before, err := cli.Status(ctx, follower.ClientURL)
	if err != nil {
		b.Fatal(err)
	}
	rpcStart := time.Now()
	if _, err := cli.Defragment(ctx, follower.ClientURL); err != nil {
		b.Fatal(err)
	}
	rpc := time.Since(rpcStart)
	after, err := cli.Status(ctx, follower.ClientURL)
	if err != nil {
		b.Fatal(err)
	}
	ds := c.Defrags()
	if len(ds) != 1 {
		b.Fatalf("Defrags() = %v, want 1", ds)
	}
	mib := func(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) }
	b.Logf("fill %v (compact %v, wait compacted %v); db %s MiB in use %s MiB -> %s MiB; defrag %v (rpc %v)",
		res.Took.Round(time.Millisecond), res.CompactTook.Round(time.Millisecond), waitCompacted.Round(time.Millisecond),
		mib(before.DbSize), mib(before.DbSizeInUse), mib(after.DbSize), ds[0].Duration().Round(time.Millisecond), rpc.Round(time.Millisecond))
	b.ReportMetric(res.Took.Seconds(), "fill_s")
	b.ReportMetric(ds[0].Duration().Seconds(), "defrag_s")
	b.ReportMetric(float64(before.DbSize)/(1<<20), "db_MiB")
	b.ReportMetric(float64(before.DbSizeInUse)/(1<<20), "inuse_MiB")
}
