package rule_test

import (
	"fmt"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

func ExampleCompile() {
	r, err := rule.Compile("dbQuotaUsage > 0.8 || dbSizeFree > 200*1024*1024")
	if err != nil {
		fmt.Println(err)
		return
	}

	// A 1.5 GiB file with 300 MiB free, 2 GiB quota, a follower in a
	// three-member cluster, last defragmented six hours ago.
	v := rule.NewVars(rule.Readings{DBSize: 1536 << 20, DBSizeInUse: 1236 << 20, DBQuota: 2 << 30, Members: 3, SinceLastDefrag: 6 * time.Hour})
	fire, err := r.Eval(v)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s: %v\n", r, fire)

	_, err = rule.Compile("dbsize > 1")
	fmt.Println(err)

	// Output:
	// dbQuotaUsage > 0.8 || dbSizeFree > 200*1024*1024: true
	// rule "dbsize > 1": unknown name dbsize (1:1); did you mean dbSize? (variables: dbSize, dbSizeInUse, dbSizeFree, dbQuota, dbQuotaUsage, fragmentation, isLeader, members, sinceLastDefrag, expectedDefragSeconds, diskFree, dbSizeGrowthRate, dbSizeInUseGrowthRate, secondsToQuota, writesPerSecond, hour, minute, weekday)
}

func ExampleRule_Eval() {
	r, err := rule.Compile(rule.Default)
	if err != nil {
		fmt.Println(err)
		return
	}
	const mib = 1 << 20
	never := time.Duration(-1)

	// Near the 2 GiB quota, and a defragmentation would give back 500 MiB.
	fire, _ := r.Eval(rule.NewVars(rule.Readings{DBSize: 1900 * mib, DBSizeInUse: 1400 * mib, DBQuota: 2048 * mib, Members: 3, SinceLastDefrag: never}))
	fmt.Println(fire)

	// Just as full, but right after a defragmentation: nothing to reclaim.
	fire, _ = r.Eval(rule.NewVars(rule.Readings{DBSize: 1900 * mib, DBSizeInUse: 1900*mib - 64<<10, DBQuota: 2048 * mib, Members: 3, SinceLastDefrag: time.Minute}))
	fmt.Println(fire)

	// Output:
	// true
	// false
}
