package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// Decision is how a cycle ended.
type Decision string

// The decisions of a cycle.
const (
	DecisionDefragmented Decision = "defragmented" // the member was defragmented and checked
	DecisionSkipped      Decision = "skipped"      // no defrag; Reason says why
	DecisionFailed       Decision = "failed"       // a defrag, a check or a NOSPACE recovery failed
	DecisionRecovered    Decision = "recovered"    // this agent brought the cluster back from NOSPACE
)

// Sizes are a member's database sizes at one moment, as last/ records them.
type Sizes = coord.Sizes

// Report is what one cycle did. /status serves the last one as JSON, and the
// cycle's one log event carries the same fields.
type Report struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Member   string    `json:"member_id,omitempty"`
	Endpoint string    `json:"endpoint,omitempty"`
	Leader   bool      `json:"is_leader"`
	Decision Decision  `json:"decision"`
	Reason   Reason    `json:"reason,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Rule is the rule's verdict; nil when it was not evaluated.
	Rule   *bool  `json:"rule,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
	Before *Sizes `json:"before,omitempty"`
	After  *Sizes `json:"after,omitempty"`
	// Reclaimed is dbSize before minus after.
	Reclaimed int64 `json:"reclaimed_bytes,omitempty"`
	// Waits and the defrag, in seconds.
	LeaderWaitSeconds float64 `json:"leader_wait_seconds,omitempty"`
	LockWaitSeconds   float64 `json:"lock_wait_seconds,omitempty"`
	DefragSeconds     float64 `json:"defrag_seconds,omitempty"`
	// Defragmented lists the members defragmented during a NOSPACE recovery.
	Defragmented []string `json:"defragmented,omitempty"`
	// ExpectedDefragSeconds is the forecast duration of a defrag of the
	// member, and CopyRateSource what it is based on: "member" (its own
	// recorded defrags), "cluster" (the other members') or "default".
	ExpectedDefragSeconds float64 `json:"expected_defrag_seconds"`
	CopyRateSource        string  `json:"copy_rate_source,omitempty"`
	// DiskFreeBytes is the free space of the data directory's filesystem;
	// absent without --data-dir.
	DiskFreeBytes *int64 `json:"disk_free_bytes,omitempty"`
	// Trend is what the rule saw of the member's growth and writes.
	Trend *TrendReport `json:"trend,omitempty"`
	// EtcdVersion is the member's etcd version; Warnings name its known
	// defrag bugs, and the guards a NOSPACE recovery overrode.
	EtcdVersion string   `json:"etcd_version,omitempty"`
	Warnings    []string `json:"warnings,omitempty"`
}

// LogValue makes a Report one structured log event.
func (r Report) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("decision", string(r.Decision)),
		slog.Bool("is_leader", r.Leader),
		slog.Float64("duration_seconds", r.End.Sub(r.Start).Seconds()),
	}
	if r.Reason != "" {
		attrs = append(attrs, slog.String("reason", string(r.Reason)))
	}
	if r.Error != "" {
		attrs = append(attrs, slog.String("err", r.Error))
	}
	if r.Rule != nil {
		attrs = append(attrs, slog.Bool("rule", *r.Rule))
	}
	if r.DryRun {
		attrs = append(attrs, slog.Bool("dry_run", true))
	}
	if r.Before != nil {
		attrs = append(attrs, slog.Int64("db_size_bytes", r.Before.DBSize),
			slog.Int64("db_size_in_use_bytes", r.Before.DBSizeInUse),
			slog.Int64("db_quota_bytes", r.Before.DBQuota))
	}
	if r.After != nil {
		attrs = append(attrs, slog.Int64("db_size_after_bytes", r.After.DBSize),
			slog.Int64("reclaimed_bytes", r.Reclaimed))
	}
	for _, d := range []struct {
		key string
		v   float64
	}{{"leader_wait_seconds", r.LeaderWaitSeconds}, {"lock_wait_seconds", r.LockWaitSeconds}, {"defrag_seconds", r.DefragSeconds}} {
		if d.v > 0 {
			attrs = append(attrs, slog.Float64(d.key, d.v))
		}
	}
	if len(r.Defragmented) > 0 {
		attrs = append(attrs, slog.Any("defragmented", r.Defragmented))
	}
	return slog.GroupValue(attrs...)
}

// BlockedError is returned by RunOnce when a defrag was needed, or could not
// be ruled out, and did not happen, or when a defrag or its checks failed.
type BlockedError struct {
	Reason Reason
	Err    error
}

func (e *BlockedError) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return fmt.Sprintf("%s: %v", e.Reason, e.Err)
}

func (e *BlockedError) Unwrap() error { return e.Err }

// ErrMemberUnreachable is wrapped in the error of a cycle that could not read
// its own member's status through any endpoint. With --once, where there is
// no later cycle, it means the endpoints (or the credentials) are wrong.
var ErrMemberUnreachable = errors.New("this agent's member does not answer")

// ReasonOf returns the reason carried by an error from RunOnce, or "".
func ReasonOf(err error) Reason {
	var b *BlockedError
	if errors.As(err, &b) {
		return b.Reason
	}
	return ""
}

// logLevel picks the level of a cycle's log event.
func (a *Agent) logLevel(prev, cur Report, err error) slog.Level {
	switch {
	case cur.Decision == DecisionFailed:
		return slog.LevelError
	case err != nil:
		return slog.LevelWarn
	case cur.Decision == DecisionSkipped && prev.Decision == cur.Decision && prev.Reason == cur.Reason:
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// TrendReport is the member's trend as the rule saw it. A value that is not
// known yet, or infinite (secondsToQuota of a file that does not grow), is
// absent: JSON has no infinity.
type TrendReport struct {
	DBSizeGrowth      *float64 `json:"db_size_growth_bytes_per_second,omitempty"`
	DBSizeInUseGrowth *float64 `json:"db_size_in_use_growth_bytes_per_second,omitempty"`
	SecondsToQuota    *float64 `json:"seconds_to_quota,omitempty"`
	WritesPerSecond   *float64 `json:"writes_per_second,omitempty"`
}

// trendReport is the report's view of what the rule saw (v) of the trend (r).
func trendReport(v rule.Vars, r trendRates) *TrendReport {
	finite := func(x float64) *float64 {
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return nil
		}
		return &x
	}
	t := &TrendReport{SecondsToQuota: finite(v.SecondsToQuota), WritesPerSecond: finite(v.WritesPerSecond)}
	if r.Known {
		t.DBSizeGrowth, t.DBSizeInUseGrowth = &r.DBSize, &r.DBSizeInUse
	}
	return t
}
