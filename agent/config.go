package agent

import (
	"strings"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// Config is what the agent needs to know. The koanf tag of a field is its
// configuration key: package config decodes the command line, the
// environment and the configuration file into it. User, Identity and Version
// are not keys; package main sets them.
type Config struct {
	// Rule decides whether a defrag of the member pays.
	Rule *rule.Rule `koanf:"defrag-rule"`
	// QuotaBytes is the space quota used when Status does not report one
	// (etcd before 3.6).
	QuotaBytes int64 `koanf:"etcd-storage-quota-bytes"`
	// Cooldown is the least time between two defrags of the member.
	Cooldown time.Duration `koanf:"cooldown"`
	// CommandTimeout bounds each single request to etcd.
	CommandTimeout time.Duration `koanf:"command-timeout"`
	// DefragTimeout bounds a defrag: from the request until the member answers
	// a read again. The lock is held that long at most.
	DefragTimeout time.Duration `koanf:"defrag-timeout"`
	// LockTimeout bounds the wait for the lock.
	LockTimeout time.Duration `koanf:"lock-timeout"`
	// LeaderWaitTimeout bounds the wait of the leader's agent for followers.
	LeaderWaitTimeout time.Duration `koanf:"leader-wait-timeout"`
	// LockPrefix is where the agents' keys live.
	LockPrefix string `koanf:"lock-prefix"`
	// LockTTL is the session lease's time to live.
	LockTTL time.Duration `koanf:"lock-ttl"`
	// Compaction compacts before each defrag, keeping CompactionRetention
	// revisions. Under NOSPACE the agent compacts whatever Compaction says.
	Compaction          bool  `koanf:"compaction"`
	CompactionRetention int64 `koanf:"compaction-retention"`
	// DryRun decides and reports, and never changes anything in etcd.
	DryRun bool `koanf:"dry-run"`
	// MoveLeader hands leadership to a healthy caught-up follower before the
	// leader's member is defragmented.
	MoveLeader bool `koanf:"move-leader"`
	// AutoDisalarm disarms NOSPACE once every member is below
	// DisalarmThreshold of its quota.
	AutoDisalarm      bool    `koanf:"auto-disalarm"`
	DisalarmThreshold float64 `koanf:"disalarm-threshold"`
	// AllowQuorumLoss allows a defrag when the other voting members cannot
	// keep quorum alone (clusters of one or two voting members).
	AllowQuorumLoss bool `koanf:"allow-quorum-loss"`
	// VerifyHashKV compares the member's HashKV with a peer's after a defrag.
	VerifyHashKV bool `koanf:"verify-hashkv"`
	// MaxDefragDuration refuses a defrag forecast to take longer (0: off).
	MaxDefragDuration time.Duration `koanf:"max-defrag-duration"`
	// DataDir is etcd's data directory; when set, a defrag needs free space
	// on its filesystem of the in-use size times 1+DiskHeadroom.
	DataDir      string  `koanf:"data-dir"`
	DiskHeadroom float64 `koanf:"disk-headroom"`
	// GrowthWindow is the span the growth rates are measured over (0:
	// DefaultGrowthWindow).
	GrowthWindow time.Duration `koanf:"growth-window"`
	// Timezone is the zone of the rule's hour, minute and weekday, and of
	// a cron schedule (the zero value is UTC).
	Timezone Timezone `koanf:"timezone"`
	// Once marks a single-cycle run: on Close the session is left to expire
	// instead of revoked, so a leader's agent started at the same moment still
	// sees this agent's decision.
	Once bool `koanf:"once"`
	// User is the etcd user the agent acts as ("" without auth), for the root
	// role check and messages.
	User string `koanf:"-"`
	// Identity names this process in its announcements (host and PID).
	Identity string `koanf:"-"`
	// Version is the agent's version.
	Version string `koanf:"-"`
}

// DefaultGrowthWindow is the growth rates' window when none is configured:
// long enough to smooth the steps in which bbolt grows its file, short
// enough to follow a change of load within the hour.
const DefaultGrowthWindow = time.Hour

// Timezone is a time zone by its IANA name ("UTC", "Europe/Berlin").
type Timezone struct {
	Location *time.Location
}

// Loc returns the zone; UTC for the zero value.
func (z Timezone) Loc() *time.Location {
	if z.Location == nil {
		return time.UTC
	}
	return z.Location
}

// String returns the zone's name.
func (z Timezone) String() string { return z.Loc().String() }

// Schedule says when cycles run: every Every (the first cycle at once), or
// at the times of a cron expression. Exactly one is set.
type Schedule struct {
	Every time.Duration
	Cron  string
}

// String returns the schedule as it is written in the configuration:
// "@every 1m", or the cron expression.
func (s Schedule) String() string {
	if s.Cron != "" {
		return s.Cron
	}
	d := s.Every.String() // 1m0s, 1h0m0s
	d = strings.Replace(strings.Replace(d, "m0s", "m", 1), "h0m", "h", 1)
	return "@every " + d
}
