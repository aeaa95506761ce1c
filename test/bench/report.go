package bench

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The goals of the issue, judged in the report; never pass conditions of a
// test.
const (
	goalRatio       = 1.2                    // P1: agents' round / floor
	goalRatio1GiB   = 1.05                   // P1 at 1000 MiB written, HashKV check on
	goalStallMargin = 100 * time.Millisecond // P2 (b): stall ≤ longest defrag + this
	goalPeak        = 0.9                    // P3 (c): peak dbSize/quota
	goalRSS         = 30 << 20               // P4
	goalScrape      = 5 * time.Millisecond   // P4: /metrics p99
)

// The report's plots, in dir/bench/.
const (
	plotRatios  = "p1-ratio.png"
	plotScale   = "scale.png"
	plotLatency = "p2-latency.png"
	plotSizes   = "p3-dbsize.png"
)

// scaleDataMiB is the amount of data of the scale series.
const scaleDataMiB = 300

// WriteReport renders r as dir/BENCHMARKS.md, and P1's plots into
// dir/bench/ (P2's and P3's are drawn by their benchmarks from the raw
// series, which r does not keep).
func WriteReport(dir string, r *Results) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.Rounds) > 0 {
		if err := PlotRatios(filepath.Join(dir, "bench", plotRatios), r.Rounds, goalRatio); err != nil {
			return fmt.Errorf("plot %s: %w", plotRatios, err)
		}
		if scaleCases(r.Rounds) > 1 {
			if err := PlotScale(filepath.Join(dir, "bench", plotScale), r.Rounds, scaleDataMiB); err != nil {
				return fmt.Errorf("plot %s: %w", plotScale, err)
			}
		}
	}
	var b bytes.Buffer
	w := &report{b: &b, r: r, dir: dir}
	w.render()
	return os.WriteFile(filepath.Join(dir, "BENCHMARKS.md"), b.Bytes(), 0o644)
}

// scaleCases counts the cluster sizes measured with scaleDataMiB.
func scaleCases(rounds []RoundCase) int {
	n := 0
	for _, rc := range rounds {
		if rc.DataMiB == scaleDataMiB && len(rc.Runs) > 0 {
			n++
		}
	}
	return n
}

type report struct {
	b   *bytes.Buffer
	r   *Results
	dir string
}

func (w *report) p(format string, args ...any) { fmt.Fprintf(w.b, format+"\n", args...) }

// image links a plot if it exists.
func (w *report) image(name, alt string) {
	if _, err := os.Stat(filepath.Join(w.dir, "bench", name)); err == nil {
		w.p("![%s](bench/%s)\n", alt, name)
	}
}

func (w *report) render() {
	r := w.r
	w.p("# Benchmarks\n")
	w.p("<!-- Written by `%s` (test/bench); do not edit by hand: run it again. -->\n", r.Command)
	if r.Quick {
		w.p("> **Quick mode** (`BENCH_QUICK=1`): every benchmark ran briefly, on little data, to keep the suite working. These numbers mean nothing; a full run writes `docs/BENCHMARKS.md`.\n")
	}
	w.p("What the agents cost a cluster and what they buy it, measured against real etcd processes " +
		"(the end-to-end harness of `test/e2e`: every member and every agent a separate process on loopback). " +
		"These are recorded numbers, not tests: nothing here passes or fails on a timing, and the goals below are judged, not asserted.\n")
	w.p("| | |\n|---|---|")
	w.p("| date | %s – %s (%s) |", r.Started.UTC().Format("2006-01-02 15:04"), r.Finished.UTC().Format("15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	w.p("| command | `%s` |", r.Command)
	m := r.Machine
	w.p("| CPU | %s, %d cores |", orDash(m.CPU), m.Cores)
	w.p("| memory | %.1f GiB |", float64(m.MemBytes)/(1<<30))
	w.p("| disk | %s; fdatasync of 8 KiB p50 %s, p99 %s; sequential write %.0f MB/s |", orDash(m.Disk), ms(m.FdatasyncP50), ms(m.FdatasyncP99), m.SeqWriteMBps)
	w.p("| OS, kernel | %s, Linux %s |", orDash(m.OS), orDash(m.Kernel))
	w.p("| Go | %s |", m.Go)
	w.p("| etcd | %s |", orDash(r.Etcd))
	w.p("| agent | %s |", orDash(r.Agent))
	w.p("| load average (1, 5, 15 min) | start %s, end %s%s |", loads(r.LoadStart), loads(r.LoadEnd), quietNote(r.QuietWait))
	w.p("| 1-minute load during the run | at most %.2f (read when each benchmark started and ended, and every 10 s during P3; the benchmarks' own processes count) |", r.LoadMax)
	for _, mg := range r.Merges {
		w.p("| merged | `%s`, %s – %s, agent %s, load at the end %s: its numbers replace this run's for what it ran |",
			mg.Command, mg.Started.UTC().Format("2006-01-02 15:04"), mg.Finished.UTC().Format("15:04 MST"), orDash(mg.Agent), loads(mg.LoadEnd))
	}
	w.p("")
	if len(r.Failed) > 0 {
		var names []string
		for n := range r.Failed {
			names = append(names, "`"+n+"`")
		}
		slices.Sort(names)
		w.p("> **Failed in this run:** %s — their numbers below are missing or partial.\n", strings.Join(names, ", "))
	}
	w.goals()
	w.p1()
	w.scale()
	w.p2()
	w.p3()
	w.p4()
	w.p5()
	w.method()
}

func (w *report) goals() {
	r := w.r
	w.p("## Goals\n")
	w.p("| goal | measured | met |\n|---|---|---|")
	if len(r.Rounds) > 0 {
		worst, at := 0.0, ""
		worst1G, at1G := 0.0, ""
		for _, rc := range r.Rounds {
			if rc.Members > 5 || len(rc.Runs) == 0 || rc.Label != "" {
				continue
			}
			if x := rc.MedianRatio(); x > worst {
				worst, at = x, fmt.Sprintf("%d members, %d MiB", rc.Members, rc.DataMiB)
			}
			if x := rc.MedianRatio(); rc.DataMiB >= 1000 && x > worst1G {
				worst1G, at1G = x, fmt.Sprintf("%d members", rc.Members)
			}
		}
		w.p("| P1: agents' round ≤ %.1f × back-to-back defrags, start-up included (3 and 5 members) | worst median ratio %.2f (%s) | %s |", goalRatio, worst, at, met(math.Round(worst*100)/100 <= goalRatio))
		if at1G != "" {
			w.p("| P1 at 1000 MiB written (1 GiB file), HashKV check on: ≤ %.2f × the floor | worst median ratio %.2f (%s) | %s |", goalRatio1GiB, worst1G, at1G, met(math.Round(worst1G*100)/100 <= goalRatio1GiB))
		}
	}
	if ph, ok := w.phase("(b)"); ok {
		limit := ph.LongestDefrag() + goalStallMargin
		w.p("| P2 (b): no failed request, longest stall ≤ longest single-member defrag + 100 ms | %d failed; stall %s, limit %s | %s |",
			ph.Failed, ms(ph.Stall), ms(limit), met(ph.Failed == 0 && ph.Stall <= limit))
	}
	for _, q := range r.Quota {
		for _, v := range q.Variants {
			if strings.HasPrefix(v.Name, "(c)") {
				w.p("| P3 (c), %s: no NOSPACE, peak dbSize ≤ %.0f %% of the quota (agents, defaults) | %d NOSPACE alarms, peak %.0f %% | %s |",
					q.Name, goalPeak*100, v.Alarms, v.MaxPeak()*100, met(v.Alarms == 0 && v.MaxPeak() <= goalPeak))
			}
		}
	}
	if f := r.Footprint; f != nil {
		if len(f.RSSMax) > 0 {
			rss := slices.Max(f.RSSMax)
			w.p("| P4: resident memory ≤ 30 MiB | %s at most | %s |", mib(rss), met(rss <= goalRSS))
		}
		if f.Scrapes > 0 {
			w.p("| P4: `/metrics` ≤ 5 ms | p99 %s, p50 %s | %s |", ms(f.ScrapeP99), ms(f.ScrapeP50), met(f.ScrapeP99 <= goalScrape))
		}
	}
	w.p("")
}

func (w *report) phase(prefix string) (LoadPhase, bool) {
	if w.r.Impact == nil {
		return LoadPhase{}, false
	}
	for _, ph := range w.r.Impact.Phases {
		if strings.HasPrefix(ph.Name, prefix) {
			return ph, true
		}
	}
	return LoadPhase{}, false
}

func (w *report) p1() {
	r := w.r
	w.p("## P1: round overhead\n")
	if len(r.Rounds) == 0 {
		w.p("Not run.\n")
		return
	}
	w.p("The floor is what a round cannot go below: `Defragment` of every member back to back through its own endpoint, " +
		"followers first, the leader last, from the first request to the last answer. Against it, one agent per member, " +
		"all started at the same instant (separate processes) with `" + mdCode(joinArgs(agentArgs(r.Rounds))) + "`, " +
		"everything else at its default (so each agent checks HashKV against a peer after its defrag), " +
		"from the first start to the last exit. The data: 8 KiB values, half of them deleted and compacted; the members' " +
		"data directories are copied once, and every run of the floor and of the agents starts from that copy, byte for byte, " +
		"after the same restart; the floor goes first in the odd runs, the agents in the even ones, so that a drift of the machine within a run weighs on both. " +
		"The ratio is the median of the runs' ratios. *Agents' own time* is their round minus their defrags (by etcd's log) over the floor, " +
		"median (min–max) of the runs: what the agents add, without the run-to-run variation of the defrags themselves.\n")
	w.image(plotRatios, "P1 ratios")
	w.p("| members | data written | dbSize / in use | runs | floor | agents | ratio (min–max) | agents' own time | defrag per member |")
	w.p("|---|---|---|---|---|---|---|---|---|")
	for _, rc := range sortedRounds(r.Rounds) {
		if len(rc.Runs) == 0 {
			continue
		}
		lo, hi := ratioRange(rc)
		own, ownLo, ownHi := rc.OwnShares()
		w.p("| %s | %d MiB | %s / %s | %d | %s | %s | **%.2f** (%.2f–%.2f) | %.1f %% (%.1f–%.1f) | %s |", caseName(rc), rc.DataMiB, mib(rc.DBSize), mib(rc.DBSizeInUse), len(rc.Runs),
			secs(rc.MedianFloor()), secs(rc.MedianAgents()), rc.MedianRatio(), lo, hi, 100*own, 100*ownLo, 100*ownHi, secs(rc.MedianFloor()/time.Duration(rc.Members)))
	}
	w.p("\n### Where the agents' time goes\n")
	w.p("The round of the median run of each case, split at etcd's own log lines (the defrag intervals) and the agents' log events " +
		"(the agents run with `--log.level=debug`, as in the e2e harness). The parts add up to the round: " +
		"*start* (from the agents' start to the first defrag), the defrags, the *handoffs* (from one defrag's end to the next one's start) and the *tail* " +
		"(from the last defrag's end to the last exit). A handoff is *answer* (the member answers a read again, and its Status after the defrag, " +
		"until the agent logs `defragmented`), *release* (the record, the announcement and the lock's release in one transaction, until the next agent logs `lock taken`: its lock watch, or the leader's wait for the followers), " +
		"*checks* (fresh Status, member list, last records, rule, health gate — a linearizable read on every member and the leader's Status —, the announcement and the in-flight record in one fenced write, lease renewal) " +
		"and *dispatch* (until etcd logs the start). The HashKV check is off the handoffs: the first member of the round hashes a peer while it defragments, every member hashes itself after the lock is released, " +
		"once the next member's defrag has started, and compares with the hash the member before it recorded at the round's revision (the first: with its peer's) (a hash holds the member's backend read transaction for its whole scan, so nothing is applied there meanwhile, and the next agent's checks read through every member). " +
		"The tail is the last member's answer, then record and release, its own HashKV, session end and exit. " +
		"*slower defrags* is the defrags minus the floor's defrags in the same run: here every member and every agent shares two cores, " +
		"so the hash of another member (the first member's peer, or the previous member) takes CPU from the defrag; members on machines of their own do not share it.\n")
	w.p("| members | data | round | defrags | slower defrags | overhead | start | handoffs | answer | release | checks | dispatch | tail (answer) |")
	w.p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, rc := range sortedRounds(r.Rounds) {
		run, ok := medianRun(rc)
		if !ok {
			continue
		}
		p, h := run.Profile, run.Profile.Sum()
		over := run.Agents - p.Defrags
		var floorDefrags time.Duration
		for _, d := range run.FloorDefrags {
			floorDefrags += d.End.Sub(d.Start)
		}
		w.p("| %s | %d MiB | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s (%s) |", caseName(rc), rc.DataMiB, secs(run.Agents), secs(p.Defrags),
			secs(p.Defrags-floorDefrags), secs(over),
			secs(p.Start), secs(p.Handoffs), secs(h.Verify), secs(h.Release), secs(h.Checks), secs(h.Dispatch), secs(p.Tail), secs(p.TailVerify))
	}
	w.p("\nThe start, by the log events of the agent that went first: *exec* (process start and configuration, until it logs `starting`), " +
		"*connect* (clients and the member's Status), *session* (alarms, member list, last record, rule, root-role check, lease grant, announcement), " +
		"*queue* (pending announcement, lock), then checks and dispatch as above.\n")
	w.p("| members | data | start | exec | connect | session | queue | checks | dispatch |\n|---|---|---|---|---|---|---|---|---|")
	for _, rc := range sortedRounds(r.Rounds) {
		run, ok := medianRun(rc)
		if !ok {
			continue
		}
		p := run.Profile
		w.p("| %s | %d MiB | %s | %s | %s | %s | %s | %s | %s |", caseName(rc), rc.DataMiB, secs(p.Start), secs(p.Exec), secs(p.Connect), secs(p.Session),
			secs(p.Queue), secs(p.Checks), secs(p.Dispatch))
	}
	w.p("\nEvery handoff of the median run with the most data, per cluster size:\n")
	w.p("| members | data | handoff | gap | answer | release | checks | dispatch |\n|---|---|---|---|---|---|---|---|")
	for _, rc := range largestPerSize(r.Rounds) {
		run, ok := medianRun(rc)
		if !ok {
			continue
		}
		for _, h := range run.Profile.Turns {
			to := h.To
			if h.ToLeader {
				to += " (leader)"
			}
			w.p("| %s | %d MiB | %s → %s | %s | %s | %s | %s | %s |", caseName(rc), rc.DataMiB, h.From, to, secs(h.Verify+h.Release+h.Checks+h.Dispatch),
				secs(h.Verify), secs(h.Release), secs(h.Checks), secs(h.Dispatch))
		}
	}
	w.p("\n*overhead* is the round minus the defrags by etcd's log. The defrags themselves can differ a little from the floor's: " +
		"the same files, but other processes are busy beside them. The agents' own account of their waits, summed over the agents " +
		"(the waits overlap the other members' defrags): ")
	var waits []string
	for _, rc := range sortedRounds(r.Rounds) {
		if run, ok := medianRun(rc); ok {
			waits = append(waits, fmt.Sprintf("%s members, %d MiB: leader %s, lock %s", caseName(rc), rc.DataMiB, secs(run.Profile.LeaderWait), secs(run.Profile.LockWait)))
		}
	}
	w.p("%s.\n", strings.Join(waits, "; "))
	w.forecasts()
}

// caseName is a P1 case's cluster size, with its variant's label and flags.
func caseName(rc RoundCase) string {
	if rc.Label == "" {
		return fmt.Sprint(rc.Members)
	}
	return fmt.Sprintf("%d, %s (`%s`)", rc.Members, rc.Label, mdCode(joinArgs(rc.ExtraArgs)))
}

// forecasts writes the error of the agents' duration forecasts, by what
// they were based on.
func (w *report) forecasts() {
	bySource := map[string][]Forecast{}
	for _, rc := range w.r.Rounds {
		for _, run := range rc.Runs {
			for _, f := range run.Forecasts {
				bySource[f.Source] = append(bySource[f.Source], f)
			}
		}
	}
	if len(bySource) == 0 {
		return
	}
	w.p("### The duration forecast\n")
	w.p("Every agent forecasts its member's defrag before it starts it (`expectedDefragSeconds`: the in-use bytes over a copy rate) and logs it; " +
		"here against the defrag's duration by etcd's log, over every run of P1. In each case the first run starts with no recorded defrag: " +
		"the first member is forecast at the default rate (50 MiB/s), the others from the rates the members before them recorded (*cluster*); " +
		"the later runs start with the previous run's records, as a cluster that was defragmented before, and forecast each member from its own (*member*). " +
		"The error is (forecast − measured) / measured: positive when the forecast was too long.\n")
	w.p("| based on | defrags | median error | smallest | largest |\n|---|---|---|---|---|")
	for _, src := range []string{"member", "cluster", "default"} {
		fs := bySource[src]
		if len(fs) == 0 {
			continue
		}
		errs := make([]float64, len(fs))
		for i, f := range fs {
			errs[i] = f.Error()
		}
		slices.Sort(errs)
		w.p("| %s | %d | %+.0f %% | %+.0f %% | %+.0f %% |", src, len(fs), 100*errs[len(errs)/2], 100*errs[0], 100*errs[len(errs)-1])
	}
	w.p("")
}

// largestPerSize returns, per cluster size, the case with the most data.
func largestPerSize(rs []RoundCase) []RoundCase {
	best := map[int]RoundCase{}
	for _, rc := range rs {
		if b, ok := best[rc.Members]; !ok || rc.DataMiB > b.DataMiB {
			best[rc.Members] = rc
		}
	}
	var out []RoundCase
	for _, rc := range best {
		out = append(out, rc)
	}
	return sortedRounds(out)
}

func (w *report) scale() {
	r := w.r
	if scaleCases(r.Rounds) < 2 {
		return
	}
	w.p("## Scale: overhead per member\n")
	w.p("P1 with %d MiB of data at every cluster size: how the agents' overhead (their round minus the floor) grows with the members.\n", scaleDataMiB)
	w.image(plotScale, "Scale")
	w.p("| members | floor | agents | overhead | overhead per member | floor per member |\n|---|---|---|---|---|---|")
	for _, rc := range sortedRounds(r.Rounds) {
		if rc.DataMiB != scaleDataMiB || len(rc.Runs) == 0 {
			continue
		}
		n := time.Duration(rc.Members)
		w.p("| %d | %s | %s | %s | %s | %s |", rc.Members, secs(rc.MedianFloor()), secs(rc.MedianAgents()), secs(rc.MedianOverhead()),
			ms(rc.MedianOverhead()/n), ms(rc.MedianFloor()/n))
	}
	w.p("")
}

func (w *report) p2() {
	im := w.r.Impact
	w.p("## P2: client impact\n")
	if im == nil {
		w.p("Not run.\n")
		return
	}
	w.p("%d members, %d MiB written (half of it reclaimable). A steady load of %.0f requests/s: %d clients, half of them putting %d-byte values, "+
		"half reading them back linearizably, each request bounded by %s; every client knows every member's endpoint. "+
		"The load generator is the end-to-end harness's (`%s`): each client sends one request at a time, so a stalled client sends nothing meanwhile. "+
		"Every phase starts from the same copy of the data. *stall* is the longest time during which no request of any client completed successfully. "+
		"The members run with etcd's `StopGRPCServiceOnDefrag`, which changes nothing for clients that do not check health (a, b, c); "+
		"in (d) the clients use gRPC health checking (`e2e.HealthCheckedLoad`), so a member that defragments gets no new requests.\n",
		im.Members, im.DataMiB, im.Rate, im.Clients, im.ValueSize, im.Timeout, im.Generator)
	w.image(plotLatency, "P2 latency over time")
	w.p("| phase | seconds | requests | ok/s | failed | p50 | p99 | max | stall | longest defrag | defrags |\n|---|---|---|---|---|---|---|---|---|---|---|")
	for _, ph := range im.Phases {
		w.p("| %s | %.0f | %d | %.0f | %d | %s | %s | %s | %s | %s | %d |", ph.Name, ph.Seconds, ph.Requests, ph.Rate, ph.Failed, ms(ph.P50), ms(ph.P99), ms(ph.Max),
			ms(ph.Stall), ms(ph.LongestDefrag()), len(ph.Defrags))
	}
	for _, ph := range im.Phases {
		if len(ph.Errors) > 0 {
			w.p("\nErrors in %s: %v", ph.Name, ph.Errors)
		}
	}
	w.p("")
}

func (w *report) p3() {
	w.p("## P3: quota keeping\n")
	if len(w.r.Quota) == 0 {
		w.p("Not run.\n")
		return
	}
	q := w.r.Quota[0]
	var classes []string
	for _, c := range q.Churn.Classes {
		classes = append(classes, fmt.Sprintf("%d keys, values of %s–%s (log-uniform), %.0f %% of the operations deletes",
			c.Keys, kib(c.MinValue), kib(c.MaxValue), c.DeleteShare*100))
	}
	w.p("A %s quota, etcd compacting by itself (`%s`: every minute, to the revision of a minute ago), and a churn: %s. "+
		"Each intensity runs on %d 3-member clusters side by side (one per variant) for %v, all %d clusters at once; the operations are the same on every cluster of an intensity (one seed). "+
		"Every member's Status is read every second. *reclaimed* is what the defrags gave back to the filesystem, by etcd's log lines (the file's size when a defrag started less its size when it ended). *in use, peak* is the highest `dbSizeInUse` of any member: the data and the history etcd keeps, "+
		"which no defrag can take away.\n",
		mib(q.Quota), q.Compaction, strings.Join(classes, "; "), len(q.Variants), q.Duration, len(q.Variants)*len(w.r.Quota))
	w.p("| churn | variant | NOSPACE alarms | first after | writes refused | defrags | reclaimed per defrag, median (all) | peak dbSize / quota per member | in use, peak |\n|---|---|---|---|---|---|---|---|---|")
	for _, q := range w.r.Quota {
		for _, v := range q.Variants {
			first := "–"
			if v.FirstAlarm > 0 {
				first = v.FirstAlarm.Round(time.Second).String()
			}
			total := v.Churn.Puts + v.Churn.Deletes + v.Churn.NoSpace + v.Churn.Failed
			reclaimed := "–"
			if len(v.Reclaimed) > 0 {
				reclaimed = fmt.Sprintf("%s (%s)", mib(v.ReclaimedMedian()), mib(v.ReclaimedTotal()))
			}
			w.p("| %s | %s | %d | %s | %d of %d | %d | %s | %s | %.0f %% |", q.Name, v.Name, v.Alarms, first, v.Churn.NoSpace, total, v.Defrags, reclaimed, peaks(v.Peak), v.InUsePeak*100)
		}
	}
	w.p("")
	for _, v := range q.Variants {
		w.p("- %s: %s.", v.Name, v.How)
	}
	w.p("")
	for _, q := range w.r.Quota {
		w.image(q.Plot, "P3 "+q.Name)
	}
}

func (w *report) p4() {
	f := w.r.Footprint
	w.p("## P4: footprint\n")
	if f == nil {
		w.p("Not run.\n")
		return
	}
	if len(f.RSSMax) > 0 {
		w.p("Three agents beside a 3-member cluster that needs no defrag, checking `%s`, watched for %v after their first cycle "+
			"(`--log.level=info`; this ran beside P3, which does not change an idle process's memory or CPU time).\n", f.Schedule, f.Idle)
		w.p("| agent | resident set, max (/proc) | `process_resident_memory_bytes` at the end | CPU time over the window | CPU share |\n|---|---|---|---|---|")
		for i := range f.RSSMax {
			cpu := time.Duration(0)
			if i < len(f.CPU) {
				cpu = f.CPU[i]
			}
			var metric int64
			if i < len(f.MetricRSS) {
				metric = f.MetricRSS[i]
			}
			w.p("| %d | %s | %s | %s | %.3f %% |", i+1, mib(f.RSSMax[i]), mib(metric), ms(cpu), 100*cpu.Seconds()/f.Idle.Seconds())
		}
		w.p("")
	}
	if f.Scrapes > 0 {
		w.p("`/metrics` of one idle agent, scraped %d times one after the other on a keep-alive connection: p50 %s, p99 %s, max %s (%d bytes).\n",
			f.Scrapes, ms(f.ScrapeP50), ms(f.ScrapeP99), ms(f.ScrapeMax), f.MetricsBytes)
	}
	if f.RuleNsPerOp > 0 {
		w.p("The default rule, evaluated (`go test -bench BenchmarkEvalDefault ./rule/`, median of five): %.0f ns/op, %.0f B/op, %.0f allocs/op.\n",
			f.RuleNsPerOp, f.RuleBytesPerOp, f.RuleAllocsPerOp)
	}
}

func (w *report) p5() {
	w.p("## P5: NOSPACE recovery\n")
	if len(w.r.NoSpace) == 0 {
		w.p("Not run.\n")
		return
	}
	w.p("As the end-to-end scenario F5: history (overwrites, nothing compacted) fills the quota of a 3-member cluster until etcd raises NOSPACE; " +
		"the agents alone (daemons, default rule and flags, `--schedule='@every 1s'`) bring it back. *writable*: from the alarm to the first successful put; " +
		"it includes up to one schedule interval before an agent's cycle sees the alarm. *recovery*: from the first recovery defrag's start to writable. " +
		"The floor of a recovery is the sum of its defrags (by the members' logs).\n")
	w.p("| quota | run | writable | recovery | defrags | sum of defrags | recovery / sum |\n|---|---|---|---|---|---|---|")
	for _, nc := range w.r.NoSpace {
		for i, run := range nc.Runs {
			w.p("| %s | %d | %s | %s | %d | %s | %.2f |", mib(nc.Quota), i+1, secs(run.Writable), secs(run.FromFirst), len(run.Defrags), secs(run.DefragSum()),
				run.FromFirst.Seconds()/max(run.DefragSum().Seconds(), 1e-9))
		}
	}
	w.p("")
}

func (w *report) method() {
	w.p("## How it was measured\n")
	w.p("- `make bench` builds the agent and the etcd of the line under test (`E2E_ETCD_VERSIONS`, default 3.6; cached after the first build), runs `go test -tags bench ./bench/` in the harness module (`test/`) and writes this file, `bench/*.png` and `bench/results.json` (every number above). `make bench-quick` runs everything briefly into `bin/bench-quick/`.")
	w.p("- Every member: `--heartbeat-interval=50 --election-timeout=1000 --snapshot-count=1000`, its data in the temporary directory (the disk above). The e2e observer's inflight-gauge sampling is off (it costs etcd about 3.6 ms of CPU per scrape, a quarter of this machine for three members); overlaps are still judged from the members' log lines.")
	w.p("- Durations of defrags are etcd's own, from its log lines (`defragmenting` … `finished defragmenting directory`).")
	w.p("- Numbers depend on the machine: a defrag copies the live data and fsyncs it, so disk speed sets the floor; everything else is a few round trips on loopback and some CPU.")
}

// helpers

// agentArgs returns the agents' flags of the first round case.
func agentArgs(rs []RoundCase) []string {
	for _, rc := range rs {
		if len(rc.AgentArgs) > 0 {
			return rc.AgentArgs
		}
	}
	return nil
}

// mdCode escapes a string for inline code in a table cell.
func mdCode(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

// joinArgs joins a command line for the report, quoting arguments with
// spaces.
func joinArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok && strings.ContainsAny(v, " *&|") {
			a = k + "='" + v + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func sortedRounds(rs []RoundCase) []RoundCase {
	out := slices.Clone(rs)
	slices.SortStableFunc(out, func(a, b RoundCase) int {
		if a.Members != b.Members {
			return a.Members - b.Members
		}
		return a.DataMiB - b.DataMiB
	})
	return out
}

func ratioRange(rc RoundCase) (lo, hi float64) {
	lo, hi = rc.Runs[0].Ratio(), rc.Runs[0].Ratio()
	for _, r := range rc.Runs {
		lo, hi = min(lo, r.Ratio()), max(hi, r.Ratio())
	}
	return lo, hi
}

// medianRun returns the run whose ratio is the median (the lower of the
// two middle ones).
func medianRun(rc RoundCase) (RoundRun, bool) {
	if len(rc.Runs) == 0 {
		return RoundRun{}, false
	}
	runs := slices.Clone(rc.Runs)
	slices.SortFunc(runs, func(a, b RoundRun) int {
		switch {
		case a.Ratio() < b.Ratio():
			return -1
		case a.Ratio() > b.Ratio():
			return 1
		}
		return 0
	})
	return runs[(len(runs)-1)/2], true
}

func peaks(p map[string]float64) string {
	var names []string
	for n := range p {
		names = append(names, n)
	}
	slices.Sort(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %.0f %%", n, p[n]*100))
	}
	return strings.Join(parts, ", ")
}

func met(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**not met**"
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func loads(l [3]float64) string { return fmt.Sprintf("%.2f, %.2f, %.2f", l[0], l[1], l[2]) }

func quietNote(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf(" (the run first waited %v for a quiet machine)", d.Round(time.Second))
}

func ms(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", d.Seconds()*1000)
	case d < 10*time.Second:
		return fmt.Sprintf("%.0f ms", d.Seconds()*1000)
	}
	return secs(d)
}

func secs(d time.Duration) string {
	if d < time.Second && d > -time.Second {
		return fmt.Sprintf("%.0f ms", d.Seconds()*1000)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// mib formats bytes as MiB.
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func kib(b int) string {
	if b >= 1<<20 {
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d KiB", b>>10)
}
