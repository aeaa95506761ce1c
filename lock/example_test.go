package lock_test

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// Two agents, each with its own session, take turns: b's Lock returns only
// after a's Unlock.
func ExampleMutex() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := etcdtest.Start(ctx, etcdtest.Options{UnsafeNoFsync: true})
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

	const prefix = "/etcd-defrag-agent/"
	var mutexes []*lock.Mutex
	for range 2 {
		s, err := lock.NewSession(ctx, cli, 5*time.Second)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), lock.CleanupTimeout)
			defer cancel()
			_ = s.Close(cctx) // revokes the lease: its queue key goes too
		}()
		mutexes = append(mutexes, lock.NewMutex(s, prefix+"lock/"))
	}
	a, b := mutexes[0], mutexes[1]

	if err := a.Lock(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("a holds the lock")

	bDone := make(chan error, 1)
	go func() {
		if err := b.Lock(ctx); err != nil { // waits until a unlocks
			bDone <- err
			return
		}
		fmt.Println("b holds the lock")
		bDone <- b.Unlock(ctx)
	}()

	// Writes under the lock are fenced: they fail with ErrNotOwner once the
	// lock is lost.
	if _, err := a.Fenced(ctx, clientv3.OpPut(prefix+"defrag/1a", `{"member":"1a"}`)); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("a releases the lock")
	if err := a.Unlock(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := <-bDone; err != nil {
		fmt.Println(err)
		return
	}
	if _, err := a.Fenced(ctx, clientv3.OpDelete(prefix+"defrag/1a")); err != nil {
		fmt.Println("a after its turn:", err)
	}
	// Output:
	// a holds the lock
	// a releases the lock
	// b holds the lock
	// a after its turn: lock: not the lock owner
}
