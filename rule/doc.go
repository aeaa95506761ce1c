// Package rule compiles and evaluates the defragmentation rule: a boolean
// expr-lang expression over the variables in [Vars], such as
//
//	dbQuotaUsage > 0.8 || dbSizeFree > 200*1024*1024
//
// The variable names and meanings of the etcd-defrag CLI (dbSize,
// dbSizeInUse, dbSizeFree, dbQuota, dbQuotaUsage) are kept, so its rules
// carry over unchanged; this package adds fragmentation, isLeader, members,
// sinceLastDefrag, expectedDefragSeconds, diskFree, the growth rates and
// secondsToQuota, writesPerSecond, and the time of day (hour, minute,
// weekday). All numbers are float64, and integer literals mix
// with them freely: 200*1024*1024 compares exactly. Division with / is
// always floating-point division.
//
// A rule is compiled once, when the configuration loads, against the typed
// environment [Vars]: an unknown variable, a syntax error or a result that
// is not a boolean is a compile error, so a bad rule fails at start rather
// than at the first cycle. [Default] is the rule used when none is
// configured.
//
// Evaluation is pure: the result depends only on the [Vars] passed in. The
// expr time builtins are disabled (now reads the clock; date and timezone
// can read the time zone database; duration goes with them), so a rule
// does not read the clock: time enters only through variables the caller
// computes (hour, minute and weekday from the time it passes in,
// sinceLastDefrag, the rates), and a test sets them. There is no I/O and no
// package-level state.
//
// The package imports nothing of the project.
package rule
