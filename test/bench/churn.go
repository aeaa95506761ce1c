package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ChurnOptions describes the churn workload of P3: overwrites and deletes
// of keys with values of varied sizes, at fixed rates, by classes of keys.
type ChurnOptions struct {
	// Prefix of the keys; each class has its own sub-prefix.
	Prefix  string       `json:"prefix"`
	Classes []ChurnClass `json:"classes"`
	// Alternate, when set, makes the classes take turns, each for this
	// long (the first class first); otherwise they run side by side.
	Alternate time.Duration `json:"alternate_ns,omitempty"`
	// Seed makes the run repeatable: every run with the same options sends
	// the same operations in the same order.
	Seed uint64 `json:"seed"`
}

// ChurnClass is one kind of object of the churn.
type ChurnClass struct {
	Name string `json:"name"`
	// Keys is the size of the class's key space.
	Keys int `json:"keys"`
	// MinValue and MaxValue bound the value sizes, drawn log-uniformly.
	MinValue int `json:"min_value"`
	MaxValue int `json:"max_value"`
	// Rate is the number of operations per second while the class runs.
	Rate float64 `json:"rate"`
	// DeleteShare is the fraction of operations that delete a key.
	DeleteShare float64 `json:"delete_share"`
}

// ChurnStats counts what Churn did.
type ChurnStats struct {
	Puts    int64 `json:"puts"`
	Deletes int64 `json:"deletes"`
	// NoSpace counts writes etcd refused with "database space exceeded";
	// Failed counts other errors.
	NoSpace int64 `json:"nospace"`
	Failed  int64 `json:"failed"`
	// Bytes is the value bytes written.
	Bytes int64 `json:"bytes"`
	// FirstNoSpace is when etcd first refused a write for NOSPACE; zero if
	// it never did.
	FirstNoSpace time.Time `json:"first_nospace,omitzero"`
	// LastError is the last error other than NOSPACE.
	LastError string `json:"last_error,omitempty"`
}

// churnTimeout bounds one request of the churn.
const churnTimeout = 5 * time.Second

// Churn runs the workload until ctx ends and returns its counts. Each class
// issues its operations on a fixed schedule, each request in its own
// goroutine, so that a slow answer does not lower the rate.
func Churn(ctx context.Context, cli *clientv3.Client, opts ChurnOptions) ChurnStats {
	var (
		st                                    ChurnStats
		mu                                    sync.Mutex
		puts, deletes, nospace, failed, bytes atomic.Int64
		wg                                    sync.WaitGroup
	)
	do := func(key string, size int, del bool, buf string) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), churnTimeout)
		defer cancel()
		var err error
		if del {
			_, err = cli.Delete(rctx, key)
		} else {
			_, err = cli.Put(rctx, key, buf[:size])
		}
		switch {
		case err == nil && del:
			deletes.Add(1)
		case err == nil:
			puts.Add(1)
			bytes.Add(int64(size))
		case errors.Is(err, rpctypes.ErrNoSpace):
			if nospace.Add(1) == 1 {
				mu.Lock()
				st.FirstNoSpace = time.Now()
				mu.Unlock()
			}
		default:
			failed.Add(1)
			mu.Lock()
			st.LastError = err.Error()
			mu.Unlock()
		}
	}
	start := time.Now()
	var loops sync.WaitGroup
	for i, c := range opts.Classes {
		loops.Go(func() {
			rng := rand.New(rand.NewPCG(opts.Seed, uint64(i)))
			buf := strings.Repeat("v", c.MaxValue)
			lo, hi := math.Log(float64(c.MinValue)), math.Log(float64(c.MaxValue))
			interval := time.Duration(float64(time.Second) / c.Rate)
			// The k-th operation is due at next; a late wake-up is caught
			// up, so the rate holds on a busy machine. With Alternate the
			// class runs only in its turns.
			next := start
			for k := 0; ; k++ {
				next = c.due(opts, i, start, next)
				if d := time.Until(next); d > 0 && sleep(ctx, d) != nil {
					return
				}
				if ctx.Err() != nil {
					return
				}
				key := fmt.Sprintf("%s%s/%06d", opts.Prefix, c.Name, rng.IntN(c.Keys))
				del := rng.Float64() < c.DeleteShare
				size := int(math.Exp(lo + rng.Float64()*(hi-lo)))
				wg.Go(func() { do(key, size, del, buf) })
				next = next.Add(interval)
			}
		})
	}
	loops.Wait()
	wg.Wait()
	st.Puts, st.Deletes, st.NoSpace, st.Failed, st.Bytes = puts.Load(), deletes.Load(), nospace.Load(), failed.Load(), bytes.Load()
	return st
}

// due moves t, the next operation's time of class i, into one of the
// class's turns when the classes alternate.
func (c ChurnClass) due(opts ChurnOptions, i int, start, t time.Time) time.Time {
	if opts.Alternate <= 0 || len(opts.Classes) < 2 {
		return t
	}
	cycle := opts.Alternate * time.Duration(len(opts.Classes))
	off := t.Sub(start) % cycle
	turn := opts.Alternate * time.Duration(i)
	switch {
	case off < turn:
		return t.Add(turn - off)
	case off >= turn+opts.Alternate:
		return t.Add(cycle - off + turn)
	}
	return t
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
