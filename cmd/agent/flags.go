package main

import (
	"io"

	"github.com/spf13/pflag"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/config"
)

// newFlagSet returns the agent's command line: one flag per configuration
// key, named like the key, plus the command-line-only --config,
// --check-config and --version. The defaults shown in the help text are
// def's; they do not take part in loading, where only the flags the user
// set override the file and the environment (config.Load). The password's
// default is never shown.
//
// The set continues on error and discards its own output: the caller
// prints the error, and the help text with FlagUsages after pointing
// SetOutput at its writer. Parse returns pflag.ErrHelp for -h and --help.
func newFlagSet(def config.Config) *pflag.FlagSet {
	fs := pflag.NewFlagSet("etcd-defrag-agent", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)

	// Command line only.
	fs.String(config.FlagConfig, "", "path to a YAML configuration file whose keys are the flag names (or set "+config.EnvVar(config.FlagConfig)+")")
	fs.Bool(config.FlagCheckConfig, false, "validate the configuration (file, environment, flags and the rule) and exit")
	fs.Bool(config.FlagVersion, false, "print the version and exit")

	// Connection to this member: the names and meanings of etcdctl and
	// etcd-defrag.
	fs.StringSlice("endpoints", def.Endpoints, "comma separated etcd endpoints (this agent's own member)")
	fs.String("cacert", def.CACert, "verify certificates of TLS-enabled secure servers using this CA bundle")
	fs.String("cert", def.Cert, "identify secure client using this TLS certificate file")
	fs.String("key", def.Key, "identify secure client using this TLS key file")
	fs.Bool("insecure-skip-tls-verify", def.InsecureSkipTLSVerify, "skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)")
	fs.Bool("insecure-transport", def.InsecureTransport, "disable transport security for client connections")
	fs.String("user", def.User, "username[:password] for authentication")
	fs.String("password", "", "password for authentication (if this option is used, --user option shouldn't include password); "+
		"prefer --password-file or "+config.EnvVar("password")+", which keep it out of the process list")
	fs.String("password-file", def.PasswordFile, "file holding the password for authentication (a trailing newline is ignored)")
	fs.Duration("dial-timeout", def.DialTimeout, "dial timeout for client connections")
	fs.Duration("command-timeout", def.CommandTimeout, "command timeout (excluding dial timeout); bounds each single etcd request")
	fs.Duration("keepalive-time", def.KeepaliveTime, "keepalive time for client connections")
	fs.Duration("keepalive-timeout", def.KeepaliveTimeout, "keepalive timeout for client connections")

	// What to defragment and how: etcd-defrag's flags.
	fs.String("defrag-rule", def.Rule.String(), "defragmentation rule: a boolean expression over the member's sizes; the member is defragmented when it is true")
	fs.Int64("etcd-storage-quota-bytes", def.QuotaBytes, "etcd storage quota in bytes (the value passed to etcd instance by flag --quota-backend-bytes); used when etcd does not report it (before 3.6)")
	fs.Bool("compaction", def.Compaction, "whether to compact before the defragmentation, keeping --compaction-retention revisions (kube-apiserver already compacts)")
	fs.Int64("compaction-retention", def.CompactionRetention, "number of newest revisions kept by --compaction (at least 1)")
	fs.Bool("dry-run", def.DryRun, "evaluate the rule and log the decision, but never defragment")
	fs.Bool("move-leader", def.MoveLeader, "move the leadership to a healthy follower before defragmenting the leader")
	fs.Bool("auto-disalarm", def.AutoDisalarm, "disarm the NOSPACE alarm once every member is below --disalarm-threshold of the quota")
	fs.Float64("disalarm-threshold", def.DisalarmThreshold, "fraction of the quota, in (0, 1], below which every member must be before NOSPACE is disarmed")

	// The agent's own.
	fs.Bool("once", def.Once, "run one cycle and exit (0: done or nothing to do; 1: a defragmentation or a check failed)")
	fs.String("schedule", def.Schedule.String(), "when to run a cycle: a cron expression (5 fields, or @hourly, @daily...) or @every <duration>")
	fs.Duration("cooldown", def.Cooldown, "least time between two defragmentations of this member (0 disables)")
	fs.Duration("defrag-timeout", def.DefragTimeout, "how long a defragmentation may take, until the member answers a read again")
	fs.Duration("max-defrag-duration", def.MaxDefragDuration, "refuse a defragmentation forecast to take longer than this (keep it below the time etcd's liveness probe allows; 0 disables)")
	fs.String("data-dir", def.DataDir, "etcd's data directory, mounted read-only: refuse a defragmentation when its filesystem lacks room for etcd's copy of the database (empty disables)")
	fs.Float64("disk-headroom", def.DiskHeadroom, "with --data-dir, free space needed beyond the in-use size, as a fraction of it, in [0, 1]")
	fs.Duration("growth-window", def.GrowthWindow, "span over which the growth rates (dbSizeGrowthRate, dbSizeInUseGrowthRate, secondsToQuota) are measured, between 1m and 168h")
	fs.String("timezone", def.Timezone.String(), "IANA time zone of the rule's hour, minute and weekday and of a cron --schedule, such as Europe/Berlin")
	fs.String("lock-prefix", def.LockPrefix, "etcd key prefix of the agents' lock and bookkeeping keys")
	fs.Duration("lock-ttl", def.LockTTL, "TTL of the agent's etcd session lease (whole seconds, at least 5s)")
	fs.Duration("lock-timeout", def.LockTimeout, "how long to wait for the lock")
	fs.Duration("leader-wait-timeout", def.LeaderWaitTimeout, "how long the leader's agent waits for pending followers to go first")
	fs.Bool("allow-quorum-loss", def.AllowQuorumLoss, "defragment even when the other voting members cannot keep quorum alone (a one- or two-member cluster, which stalls while its member defragments)")
	fs.Bool("verify-hashkv", def.VerifyHashKV, "after a defragmentation, compare the member's HashKV with a peer's at a common revision")
	fs.String("web.listen-address", def.Web.ListenAddress, "address on which to expose metrics and health endpoints (empty disables the HTTP server)")
	fs.String("web.config.file", def.Web.ConfigFile, "path to configuration file that can enable TLS or authentication, "+
		"see https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md")
	fs.String("log.level", def.Log.Level, "only log messages with the given severity or above; one of: debug, info, warn, error")
	fs.String("log.format", def.Log.Format, "output format of log messages; one of: text, json")
	return fs
}
