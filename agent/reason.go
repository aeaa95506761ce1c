package agent

// Reason says why a cycle ended the way it did. It is a metric label
// (etcd_defrag_agent_skips_total{reason}), a log field and part of /status.
type Reason string

// The reasons a cycle did not defragment.
const (
	// Nothing to do.
	ReasonRuleFalse        Reason = "rule_false"        // the rule says a defrag does not pay
	ReasonCooldown         Reason = "cooldown"          // the member was defragmented less than --cooldown ago
	ReasonLearner          Reason = "learner"           // etcd cannot defragment a learner
	ReasonDryRun           Reason = "dry_run"           // --dry-run: decided, did nothing
	ReasonNoSpaceElsewhere Reason = "nospace_elsewhere" // NOSPACE: another agent is bringing the cluster back

	// Needed, but blocked: --once exits 1 (all but shutdown).
	ReasonQuorum       Reason = "quorum_at_risk"        // fewer than 3 voting members and no --allow-quorum-loss
	ReasonLeaderWait   Reason = "leader_wait_timeout"   // the leader waited --leader-wait-timeout for followers
	ReasonLockTimeout  Reason = "lock_timeout"          // the lock was not free within --lock-timeout
	ReasonUnhealthy    Reason = "unhealthy_member"      // a voting member did not answer a linearizable read
	ReasonNotCaughtUp  Reason = "not_caught_up"         // the member lags the leader's log
	ReasonAlarm        Reason = "alarm"                 // a CORRUPT alarm is raised
	ReasonMemberBusy   Reason = "member_busy"           // a member still runs a defrag started by a lost agent
	ReasonUnavailable  Reason = "etcd_unavailable"      // etcd did not answer a request the cycle needs
	ReasonPermission   Reason = "permission_denied"     // the etcd user lacks the root role
	ReasonSessionLost  Reason = "session_lost"          // the agent's lease ended or was about to
	ReasonRuleError    Reason = "rule_error"            // the rule failed to evaluate
	ReasonShutdown     Reason = "shutdown"              // the agent is stopping
	ReasonNoSpaceStuck Reason = "nospace_unrecoverable" // NOSPACE: a member stays above --disalarm-threshold after compaction and defrag
	ReasonProbeBudget  Reason = "probe_budget"          // the defrag is forecast to outlast --max-defrag-duration
	ReasonDiskSpace    Reason = "disk_space"            // the data directory's filesystem lacks room for etcd's copy of the database
)

// ReasonHashMismatch ends a cycle whose defrag happened but whose check
// failed: the member's HashKV differs from a peer's at a common revision.
// It is a failure (defragmentations_total{result="verify_failed"}), never
// a skip.
const ReasonHashMismatch Reason = "hash_mismatch"

// reasons lists every skip reason, so each label value exists from the start.
var reasons = []Reason{
	ReasonRuleFalse, ReasonCooldown, ReasonLearner, ReasonDryRun, ReasonNoSpaceElsewhere,
	ReasonQuorum, ReasonLeaderWait, ReasonLockTimeout, ReasonUnhealthy, ReasonNotCaughtUp,
	ReasonAlarm, ReasonMemberBusy, ReasonUnavailable, ReasonPermission, ReasonSessionLost,
	ReasonRuleError, ReasonShutdown, ReasonNoSpaceStuck, ReasonProbeBudget, ReasonDiskSpace,
}

// Blocked reports whether the reason means a defrag was needed (or the agent
// could not tell) and did not happen. Such a cycle returns an error, so
// --once exits 1.
func (r Reason) Blocked() bool {
	switch r {
	case ReasonRuleFalse, ReasonCooldown, ReasonLearner, ReasonDryRun, ReasonNoSpaceElsewhere, ReasonShutdown:
		return false
	}
	return true
}
