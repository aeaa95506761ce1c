package rule

import (
	"math"
	"testing"
	"time"
)

// FuzzCompile compiles arbitrary text and evaluates whatever compiles
// against a few members. Neither may panic; a rule that compiles must give
// a bool or an error, and must keep its source.
func FuzzCompile(f *testing.F) {
	f.Add(Default)
	vars := []Vars{
		{},
		member(0, 0, 0),
		member(2*gib, 1*gib, 2*gib),
		member(8*gib, 8*gib+4*kib, 8*gib),
		NewVars(Readings{DBSize: 100 * mib, DBSizeInUse: 10 * mib, DBQuota: 2 * gib, IsLeader: true, Members: 5, ExpectedDefrag: time.Minute, DiskFree: gib}),
		{DBSize: math.MaxFloat64, DBQuota: math.SmallestNonzeroFloat64, DBQuotaUsage: math.Inf(1), Fragmentation: math.NaN(), Members: -1, SinceLastDefrag: math.Inf(1)},
	}
	f.Fuzz(func(t *testing.T, src string) {
		r, err := Compile(src)
		if err != nil {
			if r != nil {
				t.Fatalf("Compile(%q) = %v, %v, want nil with the error", src, r, err)
			}
			return
		}
		if got := r.String(); got != src {
			t.Fatalf("Compile(%q).String() = %q", src, got)
		}
		for _, v := range vars {
			_, _ = r.Eval(v) // a runtime error is an answer too; only a panic fails
		}
	})
}
