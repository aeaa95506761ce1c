package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// demo is one run of the demo: the cluster, its client and what was measured
// before the round.
type demo struct {
	opts   options
	out    io.Writer // stdout: the story
	errOut io.Writer // stderr: -v logs

	tmp     string
	c       *etcdtest.Cluster
	cli     *clientv3.Client // every member's client URL
	version string           // etcd's version
	filled  etcddata.FillResult
	lead    *etcdtest.Member // the leader when the sizes were read
	before  map[uint64]sizes // every member's sizes just before the agents start
}

// sizes are one member's database sizes, from Status.
type sizes struct {
	DBSize, InUse, Quota int64
	Revision             int64
}

func (s sizes) free() int64 { return max(s.DBSize-s.InUse, 0) }

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

// table returns a tabwriter on the output; the caller flushes it.
func (d *demo) table() *tabwriter.Writer {
	return tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
}

// run runs the demo and then stops and removes everything, whatever
// happened.
func (d *demo) run(ctx context.Context) error {
	var err error
	d.tmp, err = os.MkdirTemp("", "etcd-defrag-demo-")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	err = d.story(ctx)
	if cerr := d.cleanup(); cerr != nil {
		return errors.Join(err, cerr)
	}
	d.printf("Stopped the cluster and removed %s.\n", d.tmp)
	return err
}

// cleanup closes the client and the cluster and removes the temporary
// directory, then makes sure it is gone.
func (d *demo) cleanup() error {
	if d.cli != nil {
		_ = d.cli.Close()
	}
	if d.c != nil {
		d.c.Close()
	}
	if err := os.RemoveAll(d.tmp); err != nil {
		return fmt.Errorf("remove %s: %w", d.tmp, err)
	}
	switch _, err := os.Stat(d.tmp); {
	case err == nil:
		return fmt.Errorf("%s is still there after removal", d.tmp)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("check %s is gone: %w", d.tmp, err)
	}
	return nil
}

// story is the demo from the cluster's start to the summary.
func (d *demo) story(ctx context.Context) error {
	d.printf("etcd-defrag-agent demo: %d embedded etcd members on loopback, one agent beside each.\n\n", d.opts.members)
	if err := d.startCluster(ctx); err != nil {
		return err
	}
	if err := d.fragment(ctx); err != nil {
		return err
	}
	r, err := d.chooseRule()
	if err != nil {
		return err
	}
	res, err := d.round(ctx, r)
	if ctx.Err() != nil || res.t0.IsZero() {
		return err // interrupted, or the agents never started
	}
	if err != nil {
		d.printf("\nThe round did not complete: %v\n", err)
	}
	return errors.Join(err, d.summarize(ctx, res))
}

// startCluster starts the members and prints them.
func (d *demo) startCluster(ctx context.Context) error {
	start := time.Now()
	c, err := etcdtest.Start(ctx, etcdtest.Options{Members: d.opts.members, UnsafeNoFsync: true, Dir: d.tmp})
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	d.c = c
	took := time.Since(start)
	if d.cli, err = c.Client(ctx); err != nil {
		return err
	}
	lead, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	st, err := d.cli.Status(ctx, lead.ClientURL)
	if err != nil {
		return fmt.Errorf("status of %s: %w", lead.Name, err)
	}
	d.version = st.Version
	d.printf("Started etcd %s in %s (--unsafe-no-fsync, data under %s):\n", d.version, seconds(took), d.tmp)
	tw := d.table()
	fmt.Fprintf(tw, "  MEMBER\tID\tCLIENT URL\tROLE\n")
	for _, m := range c.Members() {
		fmt.Fprintf(tw, "  %s\t%x\t%s\t%s\n", m.Name, m.ID, m.ClientURL, role(m.ID == lead.ID))
	}
	return tw.Flush()
}

// fragment writes keys, deletes most of them and compacts, so that every
// member's file has much free space inside, then prints the sizes.
func (d *demo) fragment(ctx context.Context) error {
	o := d.opts
	d.printf("\nFragmenting: %d keys of %d B (%s of values), then %.0f%% of them deleted and the history compacted ...\n",
		o.keys, o.valueSize, mib(int64(o.keys)*int64(o.valueSize)), 100*o.garbage)
	res, err := etcddata.Fill(ctx, d.cli, etcddata.FillOptions{Keys: o.keys, ValueSize: o.valueSize, Garbage: o.garbage})
	if err != nil {
		return err
	}
	if err := d.c.WaitCompacted(ctx, res.Revision); err != nil {
		return err
	}
	d.filled = res
	d.printf("Done in %s: %d keys left at revision %d; compaction freed the pages of the deleted ones.\n",
		seconds(res.Took), res.Keys, res.Revision)
	if d.before, err = d.sizes(ctx); err != nil {
		return err
	}
	if d.lead, err = d.c.Leader(ctx); err != nil {
		return err
	}
	d.printf("Each member's backend file now (Status):\n")
	tw := d.table()
	fmt.Fprintf(tw, "  MEMBER\tDBSIZE\tDBSIZEINUSE\tRECLAIMABLE\t\n")
	for _, m := range d.c.Members() {
		s := d.before[m.ID]
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t(%.0f%% of the file)\n", m.Name, mib(s.DBSize), mib(s.InUse), mib(s.free()),
			100*float64(s.free())/float64(max(s.DBSize, 1)))
	}
	return tw.Flush()
}

// sizes reads every member's sizes.
func (d *demo) sizes(ctx context.Context) (map[uint64]sizes, error) {
	out := map[uint64]sizes{}
	for _, m := range d.c.Members() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := d.cli.Status(sctx, m.ClientURL)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", m.Name, err)
		}
		out[m.ID] = sizes{DBSize: st.DbSize, InUse: st.DbSizeInUse, Quota: st.DbSizeQuota, Revision: st.Header.Revision}
	}
	return out, nil
}

// name returns a member's name, or its ID in hex.
func (d *demo) name(id uint64) string {
	if m := d.c.MemberByID(id); m != nil {
		return m.Name
	}
	return fmt.Sprintf("%x", id)
}

func role(leader bool) string {
	if leader {
		return "leader"
	}
	return "follower"
}

// lockedWriter serialises writes: the agents log from their own goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// mib formats a byte count.
func mib(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// seconds formats a duration as seconds with two decimals.
func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// millis formats a duration in whole milliseconds.
func millis(d time.Duration) string {
	return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
}
