package etcdtest_test

import (
	"context"
	"fmt"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// Start, unlike New, needs no *testing.T: this is how a program such as
// cmd/demo uses the package.
func ExampleStart() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := etcdtest.Start(ctx, etcdtest.Options{Members: 3})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	cli, err := c.Client(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = cli.Close() }()

	res, err := etcddata.Fill(ctx, cli, etcddata.FillOptions{Keys: 1000, ValueSize: 1024, Garbage: 0.5})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("keys left:", res.Keys)

	// One member at a time, as the agents must.
	for _, m := range c.Members() {
		if _, err := cli.Defragment(ctx, m.ClientURL); err != nil {
			fmt.Println(err)
			return
		}
	}
	ds, err := c.WaitDefrags(ctx, 3)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("defrags:", len(ds), "overlapping pairs:", len(etcdtest.Overlaps(ds)))
	// Output:
	// keys left: 500
	// defrags: 3 overlapping pairs: 0
}
