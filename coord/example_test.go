package coord_test

import (
	"fmt"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

func ExampleNewKeys() {
	k := coord.NewKeys("/etcd-defrag-agent") // the trailing slash is added
	const member = 0x8e9e05c52164694d
	fmt.Println(k.Lock())
	fmt.Println(k.NoSpace())
	fmt.Println(k.Agent(member, 0x694d7c3f0a3b1e02))
	fmt.Println(k.Defrag(member))
	fmt.Println(k.Last(member))
	id, ok := k.MemberOf(k.Last(member))
	fmt.Printf("%x %v\n", id, ok)
	// Output:
	// /etcd-defrag-agent/lock/
	// /etcd-defrag-agent/nospace/
	// /etcd-defrag-agent/agents/8e9e05c52164694d/694d7c3f0a3b1e02
	// /etcd-defrag-agent/defrag/8e9e05c52164694d
	// /etcd-defrag-agent/last/8e9e05c52164694d
	// 8e9e05c52164694d true
}
