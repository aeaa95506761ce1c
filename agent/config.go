package agent

import (
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// Config is what the agent needs to know; package main fills it from the
// command line, the environment and the configuration file.
type Config struct {
	// Rule decides whether a defrag of the member pays.
	Rule *rule.Rule
	// QuotaBytes is the space quota used when Status does not report one
	// (etcd before 3.6).
	QuotaBytes int64
	// Cooldown is the least time between two defrags of the member.
	Cooldown time.Duration
	// CommandTimeout bounds each single request to etcd.
	CommandTimeout time.Duration
	// DefragTimeout bounds a defrag: from the request until the member answers
	// a read again. The lock is held that long at most.
	DefragTimeout time.Duration
	// LockTimeout bounds the wait for the lock.
	LockTimeout time.Duration
	// LeaderWaitTimeout bounds the wait of the leader's agent for followers.
	LeaderWaitTimeout time.Duration
	// LockPrefix is where the agents' keys live.
	LockPrefix string
	// LockTTL is the session lease's time to live.
	LockTTL time.Duration
	// Compaction compacts before each defrag, keeping CompactionRetention
	// revisions. Under NOSPACE the agent compacts whatever Compaction says.
	Compaction          bool
	CompactionRetention int64
	// DryRun decides and reports, and never changes anything in etcd.
	DryRun bool
	// MoveLeader hands leadership to a healthy caught-up follower before the
	// leader's member is defragmented.
	MoveLeader bool
	// AutoDisalarm disarms NOSPACE once every member is below
	// DisalarmThreshold of its quota.
	AutoDisalarm      bool
	DisalarmThreshold float64
	// AllowQuorumLoss allows a defrag when the other voting members cannot
	// keep quorum alone (clusters of one or two voting members).
	AllowQuorumLoss bool
	// VerifyHashKV compares the member's HashKV with a peer's after a defrag.
	VerifyHashKV bool
	// MaxDefragDuration refuses a defrag forecast to take longer (0: off).
	MaxDefragDuration time.Duration
	// DataDir is etcd's data directory; when set, a defrag needs free space
	// on its filesystem of the in-use size times 1+DiskHeadroom.
	DataDir      string
	DiskHeadroom float64
	// Once marks a single-cycle run: on Close the session is left to expire
	// instead of revoked, so a leader's agent started at the same moment still
	// sees this agent's decision.
	Once bool
	// User is the etcd user the agent acts as ("" without auth), for the root
	// role check and messages.
	User string
	// Identity names this process in its announcements (host and PID).
	Identity string
	// Version is the agent's version.
	Version string
}

// Schedule says when cycles run: every Every (the first cycle at once), or
// at the times of a cron expression. Exactly one is set.
type Schedule struct {
	Every time.Duration
	Cron  string
}
