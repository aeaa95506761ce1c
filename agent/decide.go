package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// decide reads the last-defrag records, forecasts the defrag, and decides on
// c.st: cooldown, the rule, then the guards. ok is true when a defrag is
// wanted and allowed (c.last holds this member's record, nil when there is
// none); otherwise the cycle ends, with err (nil for a reason that is not a
// blocked one).
func (c *cycle) decide(ctx context.Context) (ok bool, err error) {
	a := c.a
	rctx, cancel := context.WithTimeout(ctx, a.cfg.CommandTimeout)
	recs, bad, err := a.board.Lasts(rctx)
	cancel()
	if err != nil {
		return false, c.unavailable(ctx, err)
	}
	for _, e := range bad {
		c.log.Debug("ignoring an unreadable last-defrag record", "err", e)
	}
	c.last = nil
	if rec, found := recs[c.st.ID]; found {
		c.last = &rec
	}
	delete(recs, c.st.ID)
	c.measure(recs)
	c.check = checkPlan{rev: c.st.Revision}
	if !a.cfg.Compaction { // a compaction before the defrag changes what a recorded hash covers
		c.check = planCheck(recs, voters(c.members), c.st, a.now())
	}

	if inCooldown(c.last, a.now(), a.cfg.Cooldown) {
		return false, c.skip(ReasonCooldown, nil)
	}
	if fire, err := c.evaluate(); err != nil {
		return false, c.skip(ReasonRuleError, err)
	} else if !fire {
		return false, c.skip(ReasonRuleFalse, nil)
	}
	g := guards{maxDuration: a.cfg.MaxDefragDuration, dataDir: a.cfg.DataDir, headroom: a.cfg.DiskHeadroom}
	if why := g.probeBudget(c.st.DBSizeInUse, c.expected, rateSource(c.rep.CopyRateSource)); why != "" {
		return false, c.skip(ReasonProbeBudget, errors.New(why))
	}
	if why := g.diskSpace(c.st.DBSizeInUse, c.diskFree); why != "" {
		return false, c.skip(ReasonDiskSpace, errors.New(why))
	}
	return true, nil
}

// measure forecasts the defrag's duration from the records (this member's,
// c.last, and the others') and measures the free space of the data
// directory's filesystem, for the rule, the guards, the gauges and the
// report.
func (c *cycle) measure(others map[uint64]coord.Last) {
	a := c.a
	rate, src := copyRate(c.last, others)
	c.expected = expectedDuration(c.st.DBSizeInUse, rate)
	c.rep.ExpectedDefragSeconds = c.expected.Seconds()
	c.rep.CopyRateSource = string(src)
	a.metrics.expectedDefrag.Set(c.expected.Seconds())
	c.diskFree = -1
	if a.cfg.DataDir == "" {
		return
	}
	free, err := a.diskFree(a.cfg.DataDir)
	if err != nil {
		c.log.Warn("cannot measure the free space of --data-dir", "data_dir", a.cfg.DataDir, "err", err)
		return
	}
	c.diskFree = free
	c.rep.DiskFreeBytes = &free
	a.metrics.diskFree.Set(float64(free))
}

// inCooldown tells whether the last defrag attempt ended less than cooldown
// before now.
func inCooldown(last *coord.Last, now time.Time, cooldown time.Duration) bool {
	return last != nil && cooldown > 0 && now.Sub(last.End) < cooldown
}

// evaluate runs the rule on the member's latest status.
func (c *cycle) evaluate() (bool, error) {
	a, st := c.a, c.st
	since := time.Duration(-1)
	if c.last != nil && !c.last.LastSuccess.IsZero() {
		since = a.now().Sub(c.last.LastSuccess)
	}
	tr := a.trend.rates()
	vars := rule.NewVars(rule.Readings{
		DBSize: st.DBSize, DBSizeInUse: st.DBSizeInUse, DBQuota: st.Quota, IsLeader: st.isLeader(),
		Members: len(voters(c.members)), SinceLastDefrag: since,
		ExpectedDefrag: c.expected, DiskFree: c.diskFree,
		DBSizeGrowth: tr.DBSize, DBSizeInUseGrowth: tr.DBSizeInUse, WritesPerSecond: tr.WritesPerSecond,
		Now: a.now().In(a.cfg.Timezone.Loc()),
	})
	c.rep.Trend = trendReport(vars, tr)
	fire, err := a.cfg.Rule.Eval(vars)
	switch {
	case err != nil:
		a.metrics.ruleEvaluations.WithLabelValues(ruleError).Inc()
		return false, fmt.Errorf("evaluate rule %q: %w", a.cfg.Rule, err)
	case fire:
		a.metrics.ruleEvaluations.WithLabelValues(ruleTrue).Inc()
	default:
		a.metrics.ruleEvaluations.WithLabelValues(ruleFalse).Inc()
	}
	c.rep.Rule = &fire
	return fire, nil
}

// guards refuse a defrag the member cannot afford now. Under NOSPACE the
// recovery asks them too, and overrides them (nospace.go).
type guards struct {
	maxDuration time.Duration // --max-defrag-duration; 0: off
	dataDir     string        // --data-dir
	headroom    float64       // --disk-headroom
}

// probeBudget says why a defrag of inUse bytes forecast to take expected
// (at a copy rate from src) exceeds --max-defrag-duration — etcd's liveness
// probe could kill the member mid-defrag — or "".
func (g guards) probeBudget(inUse int64, expected time.Duration, src rateSource) string {
	if g.maxDuration <= 0 || expected <= g.maxDuration {
		return ""
	}
	return fmt.Sprintf("a defrag of %s in use is forecast to take %v (copy rate from %s), more than --max-defrag-duration %v: etcd's liveness probe could kill the member mid-defrag; "+
		"raise the probe's failureThreshold and --max-defrag-duration with it, or shrink the data in use",
		bytesIEC(inUse), expected.Round(time.Second), src.text(), g.maxDuration)
}

// diskSpace says why diskFree bytes on the data directory's filesystem (-1:
// not measured) leave no room for the copy of inUse bytes that a defrag
// writes, or "".
func (g guards) diskSpace(inUse, diskFree int64) string {
	if diskFree < 0 {
		return ""
	}
	need := int64(float64(inUse) * (1 + g.headroom))
	if diskFree >= need {
		return ""
	}
	return fmt.Sprintf("%s free on the filesystem of --data-dir %s, a defrag needs %s (the %s in use, which etcd copies into a new file next to the database, and --disk-headroom %.0f%%): "+
		"grow the volume or free space on it",
		bytesIEC(diskFree), g.dataDir, bytesIEC(need), bytesIEC(inUse), g.headroom*100)
}

// bytesIEC formats a byte count for messages: 1.5 GiB, 300.0 MiB, 512 B.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
