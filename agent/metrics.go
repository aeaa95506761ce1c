package agent

import (
	"math"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "etcd_defrag_agent"

// waitBuckets span a turn taken at once to a wait bounded by the defaults of
// --lock-timeout and --leader-wait-timeout (10m).
var waitBuckets = []float64{0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200}

// Results of a defragmentation, the values of the result label.
const (
	resultSuccess      = "success"       // defragmented, and the checks after it passed
	resultError        = "error"         // the Defragment RPC failed, or the member did not come back in time
	resultVerifyFailed = "verify_failed" // defragmented, but HashKV differs from a peer's
)

// Results of a rule evaluation.
const (
	ruleTrue  = "true"
	ruleFalse = "false"
	ruleError = "error"
)

// Waits, the values of the wait label.
const (
	waitLeader  = "leader"  // the leader's agent waits for followers
	waitLock    = "lock"    // waiting for the lock
	waitMember  = "member"  // waiting for a defragmented member to answer again
	waitNoSpace = "nospace" // waiting for the turn to recover from NOSPACE
)

// metrics are the agent's Prometheus metrics. Every series is about the one
// member the agent runs beside; there is no member label.
type metrics struct {
	ruleEvaluations   *prometheus.CounterVec
	defrags           *prometheus.CounterVec
	skips             *prometheus.CounterVec
	cycles            prometheus.Counter
	defragDuration    prometheus.Histogram
	lockWait          prometheus.Histogram
	leaderWait        prometheus.Histogram
	waiting           *prometheus.GaugeVec
	reclaimed         prometheus.Counter
	lastSuccess       prometheus.Gauge
	lastCycle         prometheus.Gauge
	inProgress        prometheus.Gauge
	isLeader          prometheus.Gauge
	dbSize            prometheus.Gauge
	dbSizeInUse       prometheus.Gauge
	dbQuota           prometheus.Gauge
	alarm             *prometheus.GaugeVec
	nospaceRecoveries *prometheus.CounterVec
	knownBug          *prometheus.GaugeVec
	expectedDefrag    prometheus.Gauge
	diskFree          prometheus.Gauge // nil without --data-dir
	guardOverrides    *prometheus.CounterVec
	dbSizeGrowth      prometheus.Gauge
	dbSizeInUseGrowth prometheus.Gauge
	secondsToQuota    prometheus.Gauge
	writesPerSecond   prometheus.Gauge
}

// The guards, the values of the guard label.
const (
	guardProbeBudget = "probe_budget"
	guardDiskSpace   = "disk_space"
)

// newMetrics creates the metrics, registers them with reg and creates every
// label value, so each series exists from the first scrape.
func newMetrics(reg prometheus.Registerer, version string, measureDisk bool) *metrics {
	m := &metrics{
		ruleEvaluations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rule_evaluations_total",
			Help: "Evaluations of the defrag rule, by result (true, false, error).",
		}, []string{"result"}),
		defrags: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "defragmentations_total",
			Help: "Defragmentations of this member started by the agent, by result (success, error, verify_failed).",
		}, []string{"result"}),
		skips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "skips_total",
			Help: "Cycles that ended without a defragmentation, by reason.",
		}, []string{"reason"}),
		cycles: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "cycles_total",
			Help: "Cycles run (scheduled, requested by the leader's agent, or --once).",
		}),
		defragDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "defrag_duration_seconds",
			Help:    "Time this member was being defragmented: from the Defragment request until it answered a read again.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640},
		}),
		lockWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "lock_wait_seconds",
			Help:    "Time spent waiting for the lock, whether it was taken or not.",
			Buckets: waitBuckets,
		}),
		leaderWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "leader_wait_seconds",
			Help:    "Time the leader's agent spent waiting for follower agents before taking its turn.",
			Buckets: waitBuckets,
		}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "waiting",
			Help: "1 while the agent is in the given bounded wait (leader, lock, member, nospace).",
		}, []string{"wait"}),
		reclaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "reclaimed_bytes_total",
			Help: "Bytes given back to the filesystem by defragmentations of this member (dbSize before minus after).",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_success_timestamp_seconds",
			Help: "Unix time the last successful defragmentation of this member ended (0: none since the agent started).",
		}),
		lastCycle: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_cycle_timestamp_seconds",
			Help: "Unix time the last cycle ended.",
		}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "defrag_in_progress",
			Help: "1 while this agent's member is being defragmented by the agent.",
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "is_leader",
			Help: "1 if the member led the cluster at the last status read.",
		}),
		dbSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "db_size_bytes",
			Help: "Size of the member's backend database file at the last status read.",
		}),
		dbSizeInUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "db_size_in_use_bytes",
			Help: "Bytes of the member's backend database in use at the last status read.",
		}),
		dbQuota: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "db_quota_bytes",
			Help: "Space quota of the member (from Status on etcd 3.6+, else --etcd-storage-quota-bytes).",
		}),
		alarm: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "alarm_active",
			Help: "1 while etcd reports the alarm (nospace, corrupt) anywhere in the cluster, at the last read.",
		}, []string{"alarm"}),
		nospaceRecoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "nospace_recoveries_total",
			Help: "NOSPACE recoveries this agent led, by result (success, error).",
		}, []string{"result"}),
		knownBug: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "known_defrag_bug",
			Help: "1 if the member's etcd version has the known defrag bug (crash_mid_defrag, snapshot_apply_race); see the README.",
		}, []string{"bug"}),
		expectedDefrag: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "expected_defrag_seconds",
			Help: "Forecast duration of a defragmentation of this member now: its in-use bytes over the copy rate of its recorded defragmentations (see the README).",
		}),
		guardOverrides: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "guard_overrides_total",
			Help: "Defragmentations a NOSPACE recovery ran although a guard (probe_budget, disk_space) would have refused them.",
		}, []string{"guard"}),
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	}
	m.dbSizeGrowth = gauge("db_size_growth_bytes_per_second",
		"How fast the member's backend file grows, smoothed over --growth-window (0 until measured; it starts over when the file shrinks).")
	m.dbSizeInUseGrowth = gauge("db_size_in_use_growth_bytes_per_second",
		"How fast the member's in-use bytes grow, smoothed over --growth-window (0 until measured).")
	m.secondsToQuota = gauge("seconds_to_quota",
		"Seconds until the member's backend file reaches its quota at the current growth rate (+Inf when it does not grow).")
	m.secondsToQuota.Set(math.Inf(1))
	m.writesPerSecond = gauge("writes_per_second",
		"Raft entries the member committed per second between the agent's two latest status reads (NaN until measured).")
	m.writesPerSecond.Set(math.NaN())
	if measureDisk {
		m.diskFree = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "disk_free_bytes",
			Help: "Free bytes of the filesystem of etcd's data directory (--data-dir) at the last cycle.",
		})
		reg.MustRegister(m.diskFree)
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Always 1; the labels say which build runs.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)

	for _, r := range []string{ruleTrue, ruleFalse, ruleError} {
		m.ruleEvaluations.WithLabelValues(r)
	}
	for _, r := range []string{resultSuccess, resultError, resultVerifyFailed} {
		m.defrags.WithLabelValues(r)
	}
	for _, r := range []string{resultSuccess, resultError} {
		m.nospaceRecoveries.WithLabelValues(r)
	}
	for _, r := range reasons {
		m.skips.WithLabelValues(string(r))
	}
	for _, w := range []string{waitLeader, waitLock, waitMember, waitNoSpace} {
		m.waiting.WithLabelValues(w)
	}
	for _, a := range []string{"nospace", "corrupt"} {
		m.alarm.WithLabelValues(a)
	}
	for _, b := range defragBugs {
		m.knownBug.WithLabelValues(b.Name)
	}
	for _, g := range []string{guardProbeBudget, guardDiskSpace} {
		m.guardOverrides.WithLabelValues(g)
	}
	reg.MustRegister(
		buildInfo, m.ruleEvaluations, m.defrags, m.skips, m.cycles, m.defragDuration,
		m.lockWait, m.leaderWait, m.waiting, m.reclaimed, m.lastSuccess, m.lastCycle, m.inProgress,
		m.isLeader, m.dbSize, m.dbSizeInUse, m.dbQuota, m.alarm, m.nospaceRecoveries, m.knownBug,
		m.expectedDefrag, m.guardOverrides, m.dbSizeGrowth, m.dbSizeInUseGrowth, m.secondsToQuota, m.writesPerSecond,
	)
	return m
}
