package rule

import (
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/expr-lang/expr/file"
)

const (
	kib = 1024
	mib = 1024 * kib
	gib = 1024 * mib
)

// never is the sinceLastDefrag argument of NewVars for a member that was
// never defragmented.
const never = -1 * time.Nanosecond

// inf is secondsToQuota when the file does not grow.
var inf = math.Inf(1)

// member returns the Vars of a follower in a three-member cluster that was
// never defragmented.
func member(dbSize, dbSizeInUse, dbQuota int64) Vars {
	return NewVars(Readings{DBSize: dbSize, DBSizeInUse: dbSizeInUse, DBQuota: dbQuota, Members: 3, SinceLastDefrag: never, DiskFree: -1})
}

func mustCompile(t testing.TB, src string) *Rule {
	t.Helper()
	r, err := Compile(src)
	if err != nil {
		t.Fatalf("Compile(%q) error: %v", src, err)
	}
	return r
}

type evalCase struct {
	name string
	vars Vars
	want bool
}

func runEvalCases(t *testing.T, src string, cases []evalCase) {
	t.Helper()
	r := mustCompile(t, src)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Eval(tc.vars)
			if err != nil {
				t.Fatalf("Eval(%q) error: %v", src, err)
			}
			if got != tc.want {
				t.Errorf("Eval(%q) = %v, want %v (vars %+v)", src, got, tc.want, tc.vars)
			}
		})
	}
}

func TestNewVars(t *testing.T) {
	tests := []struct {
		name string
		in   Readings
		want Vars
	}{
		{
			name: "typical",
			in:   Readings{DBSize: 1000, DBSizeInUse: 600, DBQuota: 2000, IsLeader: true, Members: 3, SinceLastDefrag: 90 * time.Second, ExpectedDefrag: 1500 * time.Millisecond, DiskFree: 5000},
			want: Vars{DBSize: 1000, DBSizeInUse: 600, DBSizeFree: 400, DBQuota: 2000, DBQuotaUsage: 0.5, Fragmentation: 0.4, IsLeader: true, Members: 3, SinceLastDefrag: 90, ExpectedDefragSeconds: 1.5, DiskFree: 5000, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "full file",
			in:   Readings{DBSize: 2000, DBSizeInUse: 2000, DBQuota: 2000, Members: 5, SinceLastDefrag: 1500 * time.Millisecond},
			want: Vars{DBSize: 2000, DBSizeInUse: 2000, DBSizeFree: 0, DBQuota: 2000, DBQuotaUsage: 1, Fragmentation: 0, Members: 5, SinceLastDefrag: 1.5, SecondsToQuota: 0, Weekday: 1},
		},
		{
			name: "empty file has no fragmentation",
			in:   Readings{DBQuota: 2000, Members: 1},
			want: Vars{DBQuota: 2000, Members: 1, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "unknown quota gives zero usage",
			in:   Readings{DBSize: 1000, DBSizeInUse: 250, Members: 3},
			want: Vars{DBSize: 1000, DBSizeInUse: 250, DBSizeFree: 750, DBQuotaUsage: 0, Fragmentation: 0.75, Members: 3, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "negative quota gives zero usage",
			in:   Readings{DBSize: 1000, DBSizeInUse: 1000, DBQuota: -1, Members: 3},
			want: Vars{DBSize: 1000, DBSizeInUse: 1000, DBQuota: -1, Members: 3, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "in use above size clamps free to zero",
			in:   Readings{DBSize: 1000, DBSizeInUse: 1100, DBQuota: 2000, Members: 3},
			want: Vars{DBSize: 1000, DBSizeInUse: 1100, DBSizeFree: 0, DBQuota: 2000, DBQuotaUsage: 0.5, Fragmentation: 0, Members: 3, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "never defragmented",
			in:   Readings{DBSize: 1000, DBSizeInUse: 1000, DBQuota: 2000, Members: 3, SinceLastDefrag: never},
			want: Vars{DBSize: 1000, DBSizeInUse: 1000, DBQuota: 2000, DBQuotaUsage: 0.5, Members: 3, SinceLastDefrag: math.Inf(1), SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "disk not measured",
			in:   Readings{DBSize: 1000, DBSizeInUse: 1000, DBQuota: 2000, Members: 3, DiskFree: -42},
			want: Vars{DBSize: 1000, DBSizeInUse: 1000, DBQuota: 2000, DBQuotaUsage: 0.5, Members: 3, DiskFree: -1, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "8 GiB quota on an 8 GiB volume",
			in:   Readings{DBSize: 6 * gib, DBSizeInUse: 4 * gib, DBQuota: 8 * gib, Members: 3, SinceLastDefrag: 24 * time.Hour, ExpectedDefrag: 80 * time.Second, DiskFree: 2 * gib},
			want: Vars{DBSize: 6 * gib, DBSizeInUse: 4 * gib, DBSizeFree: 2 * gib, DBQuota: 8 * gib, DBQuotaUsage: 0.75, Fragmentation: 1.0 / 3, Members: 3, SinceLastDefrag: 86400, ExpectedDefragSeconds: 80, DiskFree: 2 * gib, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "growing toward the quota",
			in:   Readings{DBSize: 1000, DBSizeInUse: 800, DBQuota: 2000, Members: 3, DBSizeGrowth: 2.5, DBSizeInUseGrowth: -1, WritesPerSecond: 40},
			want: Vars{DBSize: 1000, DBSizeInUse: 800, DBSizeFree: 200, DBQuota: 2000, DBQuotaUsage: 0.5, Fragmentation: 0.2, Members: 3,
				DBSizeGrowthRate: 2.5, DBSizeInUseGrowthRate: -1, SecondsToQuota: 400, WritesPerSecond: 40, Weekday: 1},
		},
		{
			name: "shrinking file never reaches the quota",
			in:   Readings{DBSize: 1000, DBSizeInUse: 800, DBQuota: 2000, Members: 3, DBSizeGrowth: -3},
			want: Vars{DBSize: 1000, DBSizeInUse: 800, DBSizeFree: 200, DBQuota: 2000, DBQuotaUsage: 0.5, Fragmentation: 0.2, Members: 3,
				DBSizeGrowthRate: -3, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "growth without a known quota",
			in:   Readings{DBSize: 1000, DBSizeInUse: 800, Members: 3, DBSizeGrowth: 5},
			want: Vars{DBSize: 1000, DBSizeInUse: 800, DBSizeFree: 200, Fragmentation: 0.2, Members: 3, DBSizeGrowthRate: 5, SecondsToQuota: inf, Weekday: 1},
		},
		{
			name: "writes not measured yet",
			in:   Readings{DBSize: 1000, DBSizeInUse: 800, DBQuota: 2000, Members: 3, WritesPerSecond: -1},
			want: Vars{DBSize: 1000, DBSizeInUse: 800, DBSizeFree: 200, DBQuota: 2000, DBQuotaUsage: 0.5, Fragmentation: 0.2, Members: 3,
				SecondsToQuota: inf, WritesPerSecond: inf, Weekday: 1},
		},
		{
			name: "the time of day in the zone passed in",
			in: Readings{DBSize: 1000, DBSizeInUse: 800, DBQuota: 2000, Members: 3,
				Now: time.Date(2026, 12, 5, 23, 59, 0, 0, time.UTC).In(time.FixedZone("UTC+2", 2*3600))},
			want: Vars{DBSize: 1000, DBSizeInUse: 800, DBSizeFree: 200, DBQuota: 2000, DBQuotaUsage: 0.5, Fragmentation: 0.2, Members: 3,
				SecondsToQuota: inf, Hour: 1, Minute: 59, Weekday: 0}, // Sunday 01:59 there
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := NewVars(tc.in); got != tc.want {
				t.Errorf("NewVars(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // words the error must contain
	}{
		{name: "empty", src: "", want: []string{"rule is empty"}},
		{name: "blank", src: " \t\n", want: []string{"rule is empty"}},
		{name: "syntax", src: "dbSize >", want: []string{`rule "dbSize >"`, "unexpected token EOF", "(1:8)"}},
		{name: "bad operator", src: "dbSize > 1 # comment", want: []string{"unexpected token"}},
		{name: "unknown variable", src: "dbsize > 1", want: []string{"unknown name dbsize", "did you mean dbSize?", "(variables: dbSize, dbSizeInUse, dbSizeFree, dbQuota, dbQuotaUsage, fragmentation, isLeader, members, sinceLastDefrag, expectedDefragSeconds, diskFree, dbSizeGrowthRate, dbSizeInUseGrowthRate, secondsToQuota, writesPerSecond, hour, minute, weekday)"}},
		{name: "unknown variable on second line", src: "dbSize > 1 &&\n  dbQuotaUsed > 0.8", want: []string{"unknown name dbQuotaUsed", "(2:3)", "(variables: dbSize"}},
		{name: "unknown function", src: "dbSize > kb(200)", want: []string{"unknown name kb", "(variables: "}},
		{name: "number", src: "dbSize + 1", want: []string{"expected bool", "float64", "must be a condition"}},
		{name: "string", src: `"dbSize > 1"`, want: []string{"expected bool", "string"}},
		{name: "nil", src: "nil", want: []string{"expected bool"}},
		{name: "now", src: "now().Hour() < 6", want: []string{"unknown name now", "clock"}},
		{name: "date", src: `date("2030-01-01") != nil`, want: []string{"unknown name date", "clock"}},
		{name: "duration", src: `sinceLastDefrag > duration("1h")`, want: []string{"unknown name duration", "clock"}},
		{name: "timezone", src: `timezone("UTC") != nil`, want: []string{"unknown name timezone", "clock"}},
		{name: "mismatched types", src: `isLeader > 1`, want: []string{"mismatched types bool and int"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Compile(tc.src)
			if err == nil {
				t.Fatalf("Compile(%q) = %v, want an error", tc.src, r)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Compile(%q) error = %q, want it to contain %q", tc.src, msg, w)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("Compile(%q) error = %q, want one line", tc.src, msg)
			}
		})
	}
}

func TestCompileErrorWrapsExpr(t *testing.T) {
	_, err := Compile("dbsize > 1")
	var fe *file.Error
	if !errors.As(err, &fe) {
		t.Fatalf("Compile error %v (%T) does not wrap a *file.Error", err, err)
	}
	if got, want := fe.Message, "unknown name dbsize"; got != want {
		t.Errorf("wrapped message = %q, want %q", got, want)
	}
}

func TestString(t *testing.T) {
	for _, src := range []string{Default, "isLeader", " dbSize > 1 "} {
		if got := mustCompile(t, src).String(); got != src {
			t.Errorf("Compile(%q).String() = %q, want %q", src, got, src)
		}
	}
}

// TestEtcdDefragExamples runs the rules of the etcd-defrag README at the
// exact boundaries of their integer literals, so a rule carried over from
// etcd-defrag decides the same here.
func TestEtcdDefragExamples(t *testing.T) {
	const (
		quota = 1_000_000_000 // dbQuota*80/100 is exactly 8e8
		limit = 200 * mib     // 200*1024*1024
	)
	below := int64(quota * 8 / 10) // dbSize == dbQuota*80/100: not above
	above := below + 1

	orCases := []evalCase{
		{name: "small and compact", vars: member(100*mib, 100*mib, quota), want: false},
		{name: "size at 80% and free at 200MiB", vars: member(below, below-limit, quota), want: false},
		{name: "size one byte over 80%", vars: member(above, above, quota), want: true},
		{name: "free one byte over 200MiB", vars: member(limit+1, 0, quota), want: true},
		{name: "free exactly 200MiB", vars: member(limit, 0, quota), want: false},
		{name: "free one byte over 200MiB in a large file", vars: member(below, below-limit-1, quota), want: true},
		{name: "both", vars: member(quota, 0, quota), want: true},
	}
	andCases := []evalCase{
		{name: "small and compact", vars: member(100*mib, 100*mib, quota), want: false},
		{name: "over 80% but free exactly 200MiB", vars: member(above, above-limit, quota), want: false},
		{name: "over 80% and free one byte over 200MiB", vars: member(above, above-limit-1, quota), want: true},
		{name: "at 80% and free over 200MiB", vars: member(below, below-limit-1, quota), want: false},
		{name: "free over 200MiB but small", vars: member(limit+1, 0, quota), want: false},
		{name: "full quota and nothing free", vars: member(quota, quota, quota), want: false},
	}

	for _, tc := range []struct {
		name  string
		src   string
		cases []evalCase
	}{
		{"or with raw sizes", "dbSize > dbQuota*80/100 || dbSize - dbSizeInUse > 200*1024*1024", orCases},
		{"or with derived", "dbQuotaUsage > 0.8 || dbSizeFree > 200*1024*1024", orCases},
		{"and with raw sizes", "dbSize > dbQuota*80/100 && dbSize - dbSizeInUse > 200*1024*1024", andCases},
		{"and with derived", "dbQuotaUsage > 0.8 && dbSizeFree > 200*1024*1024", andCases},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runEvalCases(t, tc.src, tc.cases)
		})
	}
}

func TestDefault(t *testing.T) {
	runEvalCases(t, Default, []evalCase{
		// Must fire.
		{name: "near quota with a tenth of it free", vars: member(1800*mib, 1500*mib, 2*gib), want: true},
		{name: "at quota with half free (NOSPACE after compaction)", vars: member(2*gib, 1*gib, 2*gib), want: true},
		{name: "over quota with much free", vars: member(8*gib+100*mib, 6*gib, 8*gib), want: true},
		{name: "small quota at quota with a fifth free", vars: member(100*mib, 80*mib, 100*mib), want: true},
		{name: "mostly free large file", vars: member(1*gib, 400*mib, 8*gib), want: true},
		{name: "mostly free file just over 100MiB free", vars: member(200*mib, 100*mib-1, 8*gib), want: true},

		// Must not fire: nothing worth reclaiming.
		{name: "empty", vars: member(0, 0, 2*gib), want: false},
		{name: "tiny and mostly free", vars: member(1*mib, 100*kib, 2*gib), want: false},
		{name: "small and mostly free", vars: member(150*mib, 60*mib, 8*gib), want: false},
		{name: "mostly free but exactly 100MiB", vars: member(200*mib, 100*mib, 8*gib), want: false},
		{name: "exactly half free", vars: member(400*mib, 200*mib, 8*gib), want: false},
		{name: "large and compact", vars: member(6*gib, 5*gib, 8*gib), want: false},
		{name: "full with 1% free (after compaction of little)", vars: member(1945*mib, 1945*mib*99/100, 2*gib), want: false},
		{name: "full after defrag, 2GiB quota", vars: member(2*gib-16*kib, 2*gib-32*kib, 2*gib), want: false},
		{name: "full after defrag, 8GiB quota", vars: member(8*gib, 8*gib-64*kib, 8*gib), want: false},
		{name: "full after defrag, 100GiB quota", vars: member(99*gib, 99*gib-1*mib, 100*gib), want: false},
		{name: "full after defrag, 16MiB quota", vars: member(16*mib, 16*mib-4*kib, 16*mib), want: false},
		{name: "in use transiently above size", vars: member(2*gib, 2*gib+4*kib, 2*gib), want: false},
		{name: "unknown quota and compact", vars: member(4*gib, 4*gib-1*mib, 0), want: false},
	})

	// The boundaries, on a quota where dbSize/dbQuota and 0.1*dbQuota are exact.
	const quota = 1_000_000_000
	runEvalCases(t, Default, []evalCase{
		{name: "usage exactly 0.8 with free over a tenth", vars: member(800_000_000, 600_000_000, quota), want: false},
		{name: "usage just over 0.8 with free over a tenth", vars: member(800_000_001, 600_000_000, quota), want: true},
		{name: "usage over 0.8 with free exactly a tenth", vars: member(900_000_000, 800_000_000, quota), want: false},
		{name: "usage over 0.8 with free one byte over a tenth", vars: member(900_000_000, 799_999_999, quota), want: true},
	})
}

// TestDefaultNeverFiresWithoutReclaimableSpace proves the property the
// default rule is written for: with no more free space than the smaller of
// a tenth of the quota and 100 MiB, whatever the size of the file against
// the quota, the rule does not fire. Right after a defragmentation the free
// space is a few pages, far below that.
func TestDefaultNeverFiresWithoutReclaimableSpace(t *testing.T) {
	r := mustCompile(t, Default)
	for _, quota := range []int64{16 * mib, 256 * mib, 1 * gib, 2 * gib, 8 * gib, 100 * gib} {
		for _, usage := range []float64{0, 0.01, 0.5, 0.8, 0.81, 0.95, 0.99, 1, 1.05} {
			dbSize := int64(float64(quota) * usage)
			for _, free := range []int64{0, 4 * kib, 1 * mib, min(quota/10, 100*mib)} {
				free = min(free, dbSize)
				v := member(dbSize, dbSize-free, quota)
				got, err := r.Eval(v)
				if err != nil {
					t.Fatalf("Eval(%q) error: %v", Default, err)
				}
				if got {
					t.Errorf("Eval(%q) = %v, want false (quota %d, dbSize %d, free %d)", Default, got, quota, dbSize, free)
				}
			}
		}
	}
}

func TestOtherVariables(t *testing.T) {
	followerNever := NewVars(Readings{DBSize: gib, DBSizeInUse: gib, DBQuota: 2 * gib, Members: 3, SinceLastDefrag: never, DiskFree: -1})
	leaderHourAgo := NewVars(Readings{DBSize: gib, DBSizeInUse: gib, DBQuota: 2 * gib, IsLeader: true, Members: 5, SinceLastDefrag: time.Hour})
	justNow := NewVars(Readings{DBSize: gib, DBSizeInUse: gib, DBQuota: 2 * gib, Members: 1})
	slowDisk := func(d time.Duration) Vars {
		return NewVars(Readings{DBSize: 4 * gib, DBSizeInUse: 3 * gib, DBQuota: 8 * gib, Members: 3, ExpectedDefrag: d, DiskFree: -1})
	}
	roomy := NewVars(Readings{DBSize: 4 * gib, DBSizeInUse: 3 * gib, DBQuota: 8 * gib, Members: 3, DiskFree: 4 * gib})
	cramped := NewVars(Readings{DBSize: 6 * gib, DBSizeInUse: 3 * gib, DBQuota: 8 * gib, Members: 3, DiskFree: 2 * gib})
	// The README's window rule: urgent defrags any time, the others
	// between 01:00 and 05:00.
	const window = "dbQuotaUsage > 0.9 || (fragmentation > 0.5 && hour >= 1 && hour < 5)"
	at := func(dbSize, inUse int64, hour, minute int) Vars {
		return NewVars(Readings{DBSize: dbSize, DBSizeInUse: inUse, DBQuota: 2 * gib, Members: 3,
			Now: time.Date(2026, 12, 7, hour, minute, 0, 0, time.UTC)})
	}
	// The README's forecast rule: a day or less to the quota, with space to
	// reclaim.
	const forecast = "secondsToQuota < 24*3600 && dbSizeFree > 0.1*dbQuota"
	growing := func(rate float64) Vars {
		return NewVars(Readings{DBSize: gib, DBSizeInUse: 700 * mib, DBQuota: 2 * gib, Members: 3, DBSizeGrowth: rate})
	}
	// The README's quiet-moment rule.
	const quiet = "fragmentation > 0.5 && writesPerSecond < 20"
	writes := func(wps float64) Vars {
		return NewVars(Readings{DBSize: gib, DBSizeInUse: 400 * mib, DBQuota: 2 * gib, Members: 3, WritesPerSecond: wps})
	}

	tests := []struct {
		name string
		src  string
		vars Vars
		want bool
	}{
		{"never defragmented is over an hour ago", "sinceLastDefrag > 3600", followerNever, true},
		{"never defragmented is over a day ago", "sinceLastDefrag > 24*3600", followerNever, true},
		{"an hour ago is not over an hour", "sinceLastDefrag > 3600", leaderHourAgo, false},
		{"an hour ago is at least an hour", "sinceLastDefrag >= 3600", leaderHourAgo, true},
		{"just now is not over an hour", "sinceLastDefrag > 3600", justNow, false},
		{"just now is zero", "sinceLastDefrag == 0", justNow, true},
		{"leader", "isLeader", leaderHourAgo, true},
		{"follower", "isLeader", followerNever, false},
		{"follower of three", "!isLeader && members >= 3", followerNever, true},
		{"five members", "members > 3", leaderHourAgo, true},
		{"single member", "members == 1", justNow, true},
		{"compact file", "fragmentation == 0", justNow, true},
		{"60% free", "fragmentation > 0.5", member(gib, 400*mib, 2*gib), true},
		{"40% free", "fragmentation < 0.5", member(gib, 600*mib, 2*gib), true},
		{"a short defrag", "expectedDefragSeconds < 60", slowDisk(20 * time.Second), true},
		{"a long defrag", "expectedDefragSeconds < 60", slowDisk(90 * time.Second), false},
		{"room for the copy", "diskFree < 0 || diskFree > 1.2*dbSizeInUse", roomy, true},
		{"no room for the copy", "diskFree < 0 || diskFree > 1.2*dbSizeInUse", cramped, false},
		{"disk not measured", "diskFree < 0 || diskFree > 1.2*dbSizeInUse", followerNever, true},
		{"not measured is -1", "diskFree == -1", followerNever, true},
		{"window: fragmented at 03:30", window, at(gib, 400*mib, 3, 30), true},
		{"window: fragmented at 05:00", window, at(gib, 400*mib, 5, 0), false},
		{"window: fragmented at 00:59", window, at(gib, 400*mib, 0, 59), false},
		{"window: urgent at 14:00", window, at(1900*mib, 1800*mib, 14, 0), true},
		{"weekday: Monday", "weekday == 1", at(gib, gib, 12, 0), true},
		{"weekend", "weekday == 0 || weekday == 6", at(gib, gib, 12, 0), false},
		{"minute", "minute == 30", at(gib, gib, 3, 30), true},
		{"forecast: a quota 12 h away", forecast, growing(float64(gib) / (12 * 3600)), true},
		{"forecast: a quota 48 h away", forecast, growing(float64(gib) / (48 * 3600)), false},
		{"forecast: not growing", forecast, growing(0), false},
		{"growth rate", "dbSizeGrowthRate > 1024", growing(2048), true},
		{"in-use growth rate", "dbSizeInUseGrowthRate < 0", NewVars(Readings{DBSizeInUseGrowth: -5}), true},
		{"quiet", quiet, writes(5), true},
		{"busy", quiet, writes(500), false},
		{"writes not measured yet are not quiet", quiet, writes(-1), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mustCompile(t, tc.src).Eval(tc.vars)
			if err != nil {
				t.Fatalf("Eval(%q) error: %v", tc.src, err)
			}
			if got != tc.want {
				t.Errorf("Eval(%q) = %v, want %v", tc.src, got, tc.want)
			}
		})
	}
}

func TestEvalError(t *testing.T) {
	const src = "int(dbSizeFree) % int(members) == 0"
	r := mustCompile(t, src)
	got, err := r.Eval(member(gib, gib-1, 2*gib)) // 1 % 3
	if err != nil || got {
		t.Fatalf("Eval(%q) = %v, %v, want false, nil", src, got, err)
	}
	got, err = r.Eval(Vars{})
	if err == nil {
		t.Fatalf("Eval(%q) = %v, want an error (division by zero)", src, got)
	}
	for _, w := range []string{"evaluate rule", src, "divide by zero"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Eval(%q) error = %q, want it to contain %q", src, err, w)
		}
	}
}

// TestEvalConcurrent shares one Rule between goroutines; run with -race.
func TestEvalConcurrent(t *testing.T) {
	r := mustCompile(t, Default)
	fire := member(2*gib, gib, 2*gib)
	quiet := member(gib, gib, 2*gib)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 1000 {
				v, want := quiet, false
				if (i+j)%2 == 0 {
					v, want = fire, true
				}
				got, err := r.Eval(v)
				if err != nil || got != want {
					t.Errorf("Eval(%q) = %v, %v, want %v, nil", Default, got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkEvalDefault(b *testing.B) {
	r := mustCompile(b, Default)
	v := member(1800*mib, 1500*mib, 2*gib)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Eval(v); err != nil {
			b.Fatal(err)
		}
	}
}
