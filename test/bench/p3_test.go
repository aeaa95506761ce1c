//go:build bench && linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/test/e2e"
)

// p3Compaction is etcd's auto-compaction in P3: every minute, to the
// revision of a minute ago.
var p3Compaction = []string{"--auto-compaction-mode=periodic", "--auto-compaction-retention=1m"}

// p3LongCooldown is the cooldown of variant (d): what a cooldown longer
// than the default (1m) costs under churn.
const p3LongCooldown = 10 * time.Minute

// The forecast rule of variant (e): defragment also when the file would
// reach the quota within p3ForecastHorizon seconds at the growth rate of the
// last p3GrowthWindow.
const (
	p3ForecastHorizon = "300"
	p3GrowthWindow    = "5m"
)

// p3Workload is one intensity of P3's churn.
type p3Workload struct {
	name string
	rate float64 // operations per second
}

// p3Churn is the workload at a rate: the same operations on every variant
// (one seed).
func p3Churn(rate float64) ChurnOptions {
	return ChurnOptions{Prefix: "/churn/", Seed: 1, Classes: []ChurnClass{
		{Name: "obj", Keys: 200, MinValue: 1 << 10, MaxValue: 512 << 10, Rate: rate, DeleteShare: 0.1},
	}}
}

// quotaVariant is one defrag regime of P3.
type quotaVariant struct {
	name, how string
	// start starts the regime on the cluster; it runs until ctx ends.
	start func(ctx context.Context, t *testing.T, c *e2e.Cluster)
}

// TestP3QuotaKeeping runs a churn (overwrites and deletes of 200 keys with
// values from 1 KiB to 512 KiB, etcd compacting every minute to the
// revision of a minute ago) against a small quota for cfg.p3Duration, at
// two intensities, each on five clusters side by side — ten clusters at
// once: (a) no defrag, (b) a fixed schedule that does what etcd-defrag does
// from a CronJob (compact to the newest revision, defragment the followers,
// then the leader) every cfg.p3Cron, (c) the agents with the default rule
// checking every 10 s and every other flag at its default, (d) the same
// with a cooldown of 10 minutes, (e) the agents with a rule that also
// forecasts (secondsToQuota). It records NOSPACE alarms, refused writes,
// defrags and what each reclaimed, each member's peak dbSize/quota and the
// peak of the bytes in use, and plots each member's dbSize over time per intensity.
func TestP3QuotaKeeping(t *testing.T) {
	track(t)
	t.Parallel()
	agentArgs := []string{"--schedule=@every 10s", "--lock-ttl=30s"}
	long := append(slices.Clone(agentArgs), "--cooldown="+p3LongCooldown.String())
	forecast := append(slices.Clone(agentArgs), "--growth-window="+p3GrowthWindow,
		"--defrag-rule="+rule.Default+" || (secondsToQuota < "+p3ForecastHorizon+" && dbSizeFree > 0.1*dbQuota)")
	variants := []quotaVariant{
		{name: "(a) no defrag", how: "nothing defragments"},
		{name: fmt.Sprintf("(b) fixed schedule, every %v", cfg.p3Cron),
			how:   fmt.Sprintf("every %v, what etcd-defrag does with its defaults from a CronJob: compact to the newest revision, defragment the followers, then the leader", cfg.p3Cron),
			start: func(ctx context.Context, t *testing.T, c *e2e.Cluster) { go cron(ctx, t, c, cfg.p3Cron) }},
		{name: "(c) agents, defaults", how: "`" + joinArgs(agentArgs) + "`, everything else default (rule, cooldown 1m)",
			start: func(_ context.Context, t *testing.T, c *e2e.Cluster) {
				c.StartAgents(t, e2e.AgentOptions{Args: agentArgs})
			}},
		{name: fmt.Sprintf("(d) agents, cooldown %v", p3LongCooldown), how: "`" + joinArgs(long) + "`",
			start: func(_ context.Context, t *testing.T, c *e2e.Cluster) {
				c.StartAgents(t, e2e.AgentOptions{Args: long})
			}},
		{name: "(e) agents, forecast rule", how: "`" + joinArgs(forecast) + "`: the default rule, or the quota less than " +
			p3ForecastHorizon + " s away at the growth of the last " + p3GrowthWindow + " with a tenth of it to reclaim",
			start: func(_ context.Context, t *testing.T, c *e2e.Cluster) {
				c.StartAgents(t, e2e.AgentOptions{Args: forecast})
			}},
	}
	type run struct {
		w     int
		v     quotaVariant
		c     *e2e.Cluster
		phase SizePhase
		qv    QuotaVariant
		churn ChurnStats
	}
	var runs []*run
	for w := range cfg.p3Workloads {
		for _, v := range variants {
			runs = append(runs, &run{w: w, v: v, c: newCluster(t, 3, cfg.p3Quota, p3Compaction...)})
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), cfg.p3Duration)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for _, r := range runs {
		if r.v.start != nil {
			r.v.start(ctx, t, r.c)
		}
		wg.Go(func() { r.phase, r.qv = watchSizes(ctx, r.c, start) })
		wg.Go(func() { r.churn = Churn(ctx, r.c.Client(), p3Churn(cfg.p3Workloads[r.w].rate)) })
	}
	wg.Wait()
	out := make([]QuotaKeeping, len(cfg.p3Workloads))
	phases := make([][]SizePhase, len(cfg.p3Workloads))
	for w, wl := range cfg.p3Workloads {
		out[w] = QuotaKeeping{Name: wl.name, Quota: cfg.p3Quota, Duration: cfg.p3Duration, Compaction: joinArgs(p3Compaction),
			Churn: p3Churn(wl.rate), Plot: fmt.Sprintf("p3-dbsize-%d.png", w+1)}
	}
	for _, r := range runs {
		ds := r.c.Observer().Defrags()
		r.qv.Name, r.qv.How, r.qv.Churn, r.qv.Defrags = r.v.name, r.v.how, r.churn, len(ds)
		for _, d := range ds {
			if b := d.Reclaimed(); b != 0 {
				r.qv.Reclaimed = append(r.qv.Reclaimed, b)
			}
		}
		r.phase.Name = fmt.Sprintf("%s — %s", r.v.name, cfg.p3Workloads[r.w].name)
		r.phase.Defrags, r.phase.Quota = intervals(ds, ""), cfg.p3Quota
		out[r.w].Variants = append(out[r.w].Variants, r.qv)
		phases[r.w] = append(phases[r.w], r.phase)
		t.Logf("%s, %s: %+v", cfg.p3Workloads[r.w].name, r.qv.Name, r.qv)
	}
	for w := range out {
		if err := PlotSizes(filepath.Join(cfg.out, "bench", out[w].Plot), phases[w]); err != nil {
			t.Error(err)
		}
	}
	results.Update(func(r *Results) { r.Quota = out })
}

// watchSizes reads every member's Status and the alarms every second until
// ctx ends.
func watchSizes(ctx context.Context, c *e2e.Cluster, start time.Time) (SizePhase, QuotaVariant) {
	ph := SizePhase{Start: start, Series: map[string][]SizePoint{}}
	qv := QuotaVariant{Peak: map[string]float64{}}
	seen := map[uint64]bool{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		if i%10 == 0 {
			noteLoad()
		}
		for _, m := range c.Members() {
			st, err := m.Status(ctx)
			if err != nil {
				continue
			}
			ph.Series[m.Name] = append(ph.Series[m.Name], SizePoint{At: time.Now(), DBSize: st.DbSize, InUse: st.DbSizeInUse})
			qv.Peak[m.Name] = max(qv.Peak[m.Name], float64(st.DbSize)/float64(cfg.p3Quota))
			qv.InUsePeak = max(qv.InUsePeak, float64(st.DbSizeInUse)/float64(cfg.p3Quota))
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		al, err := c.Client().AlarmList(rctx)
		cancel()
		if err == nil {
			now := map[uint64]bool{}
			for _, a := range al.Alarms {
				if a.Alarm != pb.AlarmType_NOSPACE {
					continue
				}
				now[a.MemberID] = true
				if !seen[a.MemberID] {
					qv.Alarms++
					ph.Alarms = append(ph.Alarms, time.Now())
					if qv.FirstAlarm == 0 {
						qv.FirstAlarm = time.Since(start)
					}
				}
			}
			seen = now
		}
		select {
		case <-ctx.Done():
			return ph, qv
		case <-tick.C:
		}
	}
}

// cron is the fixed schedule of P3 (b): every period, what etcd-defrag does
// with its defaults — compact to the newest revision, then defragment every
// member, followers first and the leader last — whatever the sizes.
func cron(ctx context.Context, t *testing.T, c *e2e.Cluster, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := defragAll(ctx, c, true); err != nil && ctx.Err() == nil {
			t.Logf("fixed schedule: %v", err)
		}
	}
}

// defragAll defragments every member one after the other, followers first
// and the leader last, optionally after compacting to the newest revision.
func defragAll(ctx context.Context, c *e2e.Cluster, compact bool) error {
	lead, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	cli := c.Client()
	if compact {
		resp, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		_, err = cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
		if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
			return fmt.Errorf("compact: %w", err)
		}
	}
	order := slices.DeleteFunc(slices.Clone(c.Members()), func(m *e2e.Member) bool { return m == lead })
	for _, m := range append(order, lead) {
		mc, err := m.Client()
		if err != nil {
			return err
		}
		if _, err := mc.Defragment(ctx, m.ClientURL); err != nil {
			return fmt.Errorf("defragment %s: %w", m.Name, err)
		}
	}
	return nil
}
