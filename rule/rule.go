package rule

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
)

// Default is the rule used when none is configured:
//
//	(dbQuotaUsage > 0.8 && dbSizeFree > 0.1*dbQuota) || (fragmentation > 0.5 && dbSizeFree > 100*1024*1024)
//
// It defragments a member when its backend file is near the space quota
// (over 80%) and a defragmentation would take at least a tenth of the quota
// off it, or when more than half of the file is free and that free part is
// over 100 MiB.
//
// Both clauses require real reclaimable space. Right after a defragmentation
// dbSizeFree is a few pages, so the rule does not fire again and again on a
// full database that has nothing to reclaim: defragmenting it would block
// the member and give back nothing. A full database whose data is live
// needs compaction or a larger quota, not a defragmentation. The 100 MiB
// floor keeps small databases, where even a mostly empty file costs little,
// from being defragmented for nothing.
const Default = "(dbQuotaUsage > 0.8 && dbSizeFree > 0.1*dbQuota) || (fragmentation > 0.5 && dbSizeFree > 100*1024*1024)"

// Vars are the values a rule sees, all about one etcd member. Numbers are
// float64: bytes, seconds or counts. Build them with [NewVars] so the derived
// values are computed the same way everywhere.
//
// The expr tag of each field is the variable's name in a rule. Vars has no
// methods, because expr would expose them to rules as functions.
type Vars struct {
	// DBSize is the total size of the member's backend file in bytes
	// (Status.DbSize).
	DBSize float64 `expr:"dbSize"`
	// DBSizeInUse is the logical size in use in bytes (Status.DbSizeInUse).
	DBSizeInUse float64 `expr:"dbSizeInUse"`
	// DBSizeFree is dbSize - dbSizeInUse, never below 0: the bytes a
	// defragmentation would give back.
	DBSizeFree float64 `expr:"dbSizeFree"`
	// DBQuota is the backend space quota in bytes: from Status on etcd 3.6
	// and later, else the configured value.
	DBQuota float64 `expr:"dbQuota"`
	// DBQuotaUsage is dbSize / dbQuota, or 0 when dbQuota is not positive.
	DBQuotaUsage float64 `expr:"dbQuotaUsage"`
	// Fragmentation is dbSizeFree / dbSize, between 0 and 1, or 0 when
	// dbSize is 0.
	Fragmentation float64 `expr:"fragmentation"`
	// IsLeader is true when the member is the Raft leader.
	IsLeader bool `expr:"isLeader"`
	// Members is the number of voting members in the cluster.
	Members float64 `expr:"members"`
	// SinceLastDefrag is the number of seconds since this member's last
	// successful defragmentation by an agent, or +Inf if there was none.
	SinceLastDefrag float64 `expr:"sinceLastDefrag"`
	// ExpectedDefragSeconds is the forecast duration of a defragmentation
	// of the member now: dbSizeInUse over the copy rate of its recorded
	// defragmentations (a conservative default before the first).
	ExpectedDefragSeconds float64 `expr:"expectedDefragSeconds"`
	// DiskFree is the free space in bytes of the filesystem holding the
	// member's data directory, or -1 when it is not measured (no
	// --data-dir).
	DiskFree float64 `expr:"diskFree"`
	// DBSizeGrowthRate is how fast dbSize grows, in bytes per second,
	// smoothed over the agent's --growth-window; 0 until it is measured
	// (and right after a defragmentation, which starts it over).
	DBSizeGrowthRate float64 `expr:"dbSizeGrowthRate"`
	// DBSizeInUseGrowthRate is how fast dbSizeInUse grows, in bytes per
	// second (negative when compactions free more than is written); 0
	// until it is measured.
	DBSizeInUseGrowthRate float64 `expr:"dbSizeInUseGrowthRate"`
	// SecondsToQuota is the number of seconds until dbSize reaches dbQuota
	// at dbSizeGrowthRate: 0 when it is there already, +Inf when the file
	// does not grow (or the rate or the quota is unknown).
	SecondsToQuota float64 `expr:"secondsToQuota"`
	// WritesPerSecond is the member's committed Raft entries per second
	// between its two latest Status reads by the agent, or +Inf until
	// there are two: a rule waiting for a quiet moment does not fire on
	// an unknown rate.
	WritesPerSecond float64 `expr:"writesPerSecond"`
	// Hour (0–23), Minute (0–59) and Weekday (0 is Sunday, 6 Saturday) are
	// the time of the evaluation in the agent's --timezone (UTC by
	// default), for maintenance windows.
	Hour    float64 `expr:"hour"`
	Minute  float64 `expr:"minute"`
	Weekday float64 `expr:"weekday"`
}

// Readings are what the agent knows of a member, the raw inputs of
// [NewVars].
type Readings struct {
	DBSize, DBSizeInUse, DBQuota int64
	IsLeader                     bool
	// Members is the number of voting members.
	Members int
	// SinceLastDefrag is the time since the last successful defragmentation;
	// negative when there was none.
	SinceLastDefrag time.Duration
	// ExpectedDefrag is the forecast duration of a defragmentation now.
	ExpectedDefrag time.Duration
	// DiskFree is the free space of the data directory's filesystem in
	// bytes; negative when it is not measured.
	DiskFree int64
	// DBSizeGrowth and DBSizeInUseGrowth are the growth rates in bytes per
	// second (0: not growing, or not measured yet).
	DBSizeGrowth, DBSizeInUseGrowth float64
	// WritesPerSecond is the rate of committed Raft entries; negative when
	// it is not known yet.
	WritesPerSecond float64
	// Now is the time of the evaluation, in the zone its hour, minute and
	// weekday are read in.
	Now time.Time
}

// NewVars returns the Vars for one member and derives dbSizeFree,
// dbQuotaUsage and fragmentation from the raw numbers.
//
// A negative free size (in use larger than the file, seen transiently) is
// clamped to 0. A dbQuota of 0 or less gives a dbQuotaUsage of 0, so a
// quota-based rule does not fire on an unknown quota. A negative
// SinceLastDefrag means the member was never defragmented and gives +Inf; a
// negative DiskFree gives -1; a negative WritesPerSecond gives +Inf.
// secondsToQuota is (dbQuota - dbSize) / DBSizeGrowth: 0 once dbSize has
// reached a positive quota, +Inf when the growth rate is not positive.
func NewVars(r Readings) Vars {
	v := Vars{
		DBSize:                float64(r.DBSize),
		DBSizeInUse:           float64(r.DBSizeInUse),
		DBSizeFree:            float64(max(r.DBSize-r.DBSizeInUse, 0)),
		DBQuota:               float64(r.DBQuota),
		IsLeader:              r.IsLeader,
		Members:               float64(r.Members),
		SinceLastDefrag:       r.SinceLastDefrag.Seconds(),
		ExpectedDefragSeconds: r.ExpectedDefrag.Seconds(),
		DiskFree:              float64(r.DiskFree),
		DBSizeGrowthRate:      r.DBSizeGrowth,
		DBSizeInUseGrowthRate: r.DBSizeInUseGrowth,
		WritesPerSecond:       r.WritesPerSecond,
		Hour:                  float64(r.Now.Hour()),
		Minute:                float64(r.Now.Minute()),
		Weekday:               float64(r.Now.Weekday()),
	}
	v.SecondsToQuota = SecondsToQuota(r.DBSize, r.DBQuota, r.DBSizeGrowth)
	if r.WritesPerSecond < 0 {
		v.WritesPerSecond = math.Inf(1)
	}
	if r.DBQuota > 0 {
		v.DBQuotaUsage = v.DBSize / v.DBQuota
	}
	if r.DBSize > 0 {
		v.Fragmentation = v.DBSizeFree / v.DBSize
	}
	if r.SinceLastDefrag < 0 {
		v.SinceLastDefrag = math.Inf(1)
	}
	if r.DiskFree < 0 {
		v.DiskFree = -1
	}
	return v
}

// SecondsToQuota is the time in seconds until a file of dbSize bytes,
// growing by rate bytes per second, reaches quota: 0 once it has reached a
// positive quota, +Inf when the quota is not positive or the file does not
// grow.
func SecondsToQuota(dbSize, quota int64, rate float64) float64 {
	switch {
	case quota > 0 && dbSize >= quota:
		return 0
	case quota > 0 && rate > 0:
		return float64(quota-dbSize) / rate
	}
	return math.Inf(1)
}

// clockBuiltins are the expr time builtins, disabled in rules: now reads the
// clock, date and timezone can read the time zone database, and a rule must
// depend only on its Vars. duration is pure but has no use without them.
func clockBuiltins() []string {
	return []string{"now", "date", "duration", "timezone"}
}

// Rule is a compiled rule. It is immutable and safe for concurrent use.
type Rule struct {
	src     string
	program *vm.Program
}

// Compile compiles src against [Vars]. It fails, with an error that names
// the problem, when src is empty, is not valid expr syntax, uses a name that
// is not a variable of Vars (the error lists the valid ones), calls a
// disabled clock builtin, or does not yield a boolean.
func Compile(src string) (*Rule, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("rule is empty")
	}
	opts := []expr.Option{expr.Env(Vars{}), expr.AsBool()}
	for _, name := range clockBuiltins() {
		opts = append(opts, expr.DisableBuiltin(name))
	}
	program, err := expr.Compile(src, opts...)
	if err != nil {
		return nil, &ruleError{prefix: "rule", src: src, msg: compileMessage(err), err: err}
	}
	return &Rule{src: src, program: program}, nil
}

// Eval evaluates the rule against v. It reads nothing but v. An error is
// rare (a runtime failure such as an integer division by zero) and means
// the rule gave no answer; it is not a "false".
func (r *Rule) Eval(v Vars) (bool, error) {
	out, err := expr.Run(r.program, v)
	if err != nil {
		return false, &ruleError{prefix: "evaluate rule", src: r.src, msg: message(err), err: err}
	}
	b, ok := out.(bool)
	if !ok {
		return false, &ruleError{prefix: "evaluate rule", src: r.src, msg: fmt.Sprintf("result %v (%T) is not a bool", out, out)}
	}
	return b, nil
}

// String returns the rule's source text, as passed to [Compile].
func (r *Rule) String() string {
	return r.src
}

// ruleError keeps an error about a rule on one line: expr ends its message
// with a snippet of the source on two more lines, and the rule is quoted in
// full here instead. Unwrap returns expr's error.
type ruleError struct {
	prefix string
	src    string
	msg    string
	err    error
}

func (e *ruleError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.prefix, e.src, e.msg)
}

func (e *ruleError) Unwrap() error {
	return e.err
}

// message returns expr's message for err without the source snippet, with
// the line and column when expr knows them.
func message(err error) string {
	var fe *file.Error
	if !errors.As(err, &fe) {
		return err.Error()
	}
	if fe.Snippet == "" {
		return fe.Message
	}
	return fmt.Sprintf("%s (%d:%d)", fe.Message, fe.Line, fe.Column+1)
}

// compileMessage is message with a hint for the mistakes users make most:
// a misspelled variable, a clock function, a rule that is not a condition.
func compileMessage(err error) string {
	msg := message(err)
	var fe *file.Error
	if errors.As(err, &fe) {
		if name, ok := strings.CutPrefix(fe.Message, "unknown name "); ok {
			return msg + unknownNameHint(name)
		}
	}
	if strings.HasPrefix(msg, "expected bool") {
		return msg + "; a rule must be a condition, such as dbSizeFree > 100*1024*1024"
	}
	return msg
}

func unknownNameHint(name string) string {
	if slices.Contains(clockBuiltins(), name) {
		return "; time functions are disabled because a rule must not read the clock itself (use hour, minute, weekday or sinceLastDefrag)"
	}
	names := varNames()
	hint := ""
	for _, n := range names {
		if strings.EqualFold(n, name) {
			hint = "; did you mean " + n + "?"
		}
	}
	return hint + " (variables: " + strings.Join(names, ", ") + ")"
}

// varNames returns the rule variables, the expr tags of Vars, in order.
func varNames() []string {
	t := reflect.TypeFor[Vars]()
	names := make([]string, 0, t.NumField())
	for f := range t.Fields() {
		names = append(names, f.Tag.Get("expr"))
	}
	return names
}
