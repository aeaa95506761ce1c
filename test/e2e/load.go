//go:build linux

package e2e

// A steady client load on a cluster, as an application (a kube-apiserver)
// puts it: writers and linearizable readers on clients that know every
// member's endpoint, each request bounded by a timeout. It records every
// request, so a scenario can measure any window of it: failed requests,
// latencies and the longest time during which no request completed.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/health" // registers gRPC's client-side health checking (HealthCheckedLoad)
)

// DefaultLoadPrefix is where a load writes by default: under HarnessPrefix,
// which the user-data digest (Observer.Data) leaves out.
const DefaultLoadPrefix = HarnessPrefix + "load/"

// HealthCheckedLoad are dial options that make a load's clients use gRPC's
// client-side health checking: a member whose health service answers
// NOT_SERVING gets no new requests. etcd's client does not enable it
// itself; etcd answers NOT_SERVING during a defrag with
// --experimental-stop-grpc-service-on-defrag (3.5.14+) or
// --feature-gates=StopGRPCServiceOnDefrag=true (3.6+). The resolver's own
// service config (round robin only) is replaced by the same policy with
// health checking.
func HealthCheckedLoad() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDisableServiceConfig(),
		grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin","healthCheckConfig":{"serviceName":""}}`),
	}
}

// LoadOptions configures StartLoad.
type LoadOptions struct {
	// Name names the load in messages.
	Name string
	// Prefix of the keys; "" means DefaultLoadPrefix + Name + "/".
	Prefix string
	// Writers and Readers are the goroutines that put and that get
	// (linearizable); 0 and 0 mean 2 and 2.
	Writers, Readers int
	// Rate is the requests per second of each goroutine; 0 means 50. A
	// goroutine sends one request at a time: one that stalls sends nothing
	// meanwhile, and does not catch up afterwards.
	Rate float64
	// ValueSize is the size of every value; 0 means 1024.
	ValueSize int
	// Keys is the number of keys each writer writes round and round (and
	// the readers read); 0 means 100.
	Keys int
	// Timeout bounds each request; 0 means 5 s.
	Timeout time.Duration
	// DialOptions are added to every client's (HealthCheckedLoad).
	DialOptions []grpc.DialOption
}

// Request is one request of a load.
type Request struct {
	Worker     int
	Write      bool
	Start, End time.Time
	Err        string // "" on success
}

// Load is a running client load; every goroutine has a client of its own
// with every member's endpoint. Methods are safe for concurrent use.
type Load struct {
	opts LoadOptions

	cancel context.CancelFunc
	wg     sync.WaitGroup
	clis   []*clientv3.Client

	mu        sync.Mutex
	reqs      []Request
	lastStart []time.Time // per worker: start of its latest request
	busy      []bool      // per worker: a request is in flight
	changed   chan struct{}
}

// StartLoad starts a load on the cluster and returns once every client is
// connected. It stops at t's cleanup at the latest (Stop).
func (c *Cluster) StartLoad(t testing.TB, opts LoadOptions) *Load {
	t.Helper()
	if opts.Writers == 0 && opts.Readers == 0 {
		opts.Writers, opts.Readers = 2, 2
	}
	if opts.Rate <= 0 {
		opts.Rate = 50
	}
	if opts.ValueSize <= 0 {
		opts.ValueSize = 1024
	}
	if opts.Keys <= 0 {
		opts.Keys = 100
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultLoadPrefix + opts.Name + "/"
	}
	workers := opts.Writers + opts.Readers
	l := &Load{opts: opts, lastStart: make([]time.Time, workers), busy: make([]bool, workers), changed: make(chan struct{})}
	for range workers {
		cfg := c.clientConfig(c.Endpoints()...)
		cfg.DialOptions = append(cfg.DialOptions, opts.DialOptions...)
		cli, err := clientv3.New(cfg)
		if err != nil {
			l.closeClients()
			t.Fatalf("load %s: client: %v", opts.Name, err)
		}
		l.clis = append(l.clis, cli)
	}
	// The keys exist before the readers read them.
	value := strings.Repeat("v", opts.ValueSize)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for w := range opts.Writers {
		for k := range opts.Keys {
			if _, err := l.clis[w].Put(ctx, l.key(w, k), value); err != nil {
				l.closeClients()
				t.Fatalf("load %s: first put: %v", opts.Name, err)
			}
		}
	}
	lctx, stop := context.WithCancel(context.Background())
	l.cancel = stop
	for w := range workers {
		l.wg.Go(func() { l.work(lctx, w, value) })
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

func (l *Load) key(writer, k int) string {
	return fmt.Sprintf("%s%d/%04d", l.opts.Prefix, writer, k)
}

// work is one goroutine: a request every 1/Rate, one at a time.
func (l *Load) work(ctx context.Context, w int, value string) {
	cli := l.clis[w]
	write := w < l.opts.Writers
	tick := time.NewTicker(time.Duration(float64(time.Second) / l.opts.Rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := Request{Worker: w, Write: write, Start: time.Now()}
		l.mu.Lock()
		l.lastStart[w], l.busy[w] = r.Start, true
		l.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
		var err error
		if write {
			_, err = cli.Put(rctx, l.key(w, i%l.opts.Keys), value)
		} else {
			_, err = cli.Get(rctx, l.key(i%max(1, l.opts.Writers), i%l.opts.Keys))
		}
		cancel()
		r.End = time.Now()
		if ctx.Err() != nil && err != nil {
			l.mu.Lock()
			l.busy[w] = false
			l.mu.Unlock()
			return // stopped: not the cluster's failure
		}
		if err != nil {
			r.Err = err.Error()
		}
		l.mu.Lock()
		l.reqs = append(l.reqs, r)
		l.busy[w] = false
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
}

// Stop ends the load and closes its clients; requests in flight are
// abandoned (not counted). Only the first call does anything.
func (l *Load) Stop() {
	if l.cancel == nil {
		return
	}
	l.cancel()
	l.wg.Wait()
	l.closeClients()
	l.cancel = nil
}

func (l *Load) closeClients() {
	for _, cli := range l.clis {
		_ = cli.Close()
	}
	l.clis = nil
}

// Requests returns every finished request so far, in finishing order.
func (l *Load) Requests() []Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reqs)
}

// wait waits until cond holds, re-evaluating it on every finished request
// and at least every 100 ms. ctx bounds the wait.
func (l *Load) wait(ctx context.Context, what string, cond func() bool) error {
	for {
		l.mu.Lock()
		ch := l.changed
		ok := cond()
		l.mu.Unlock()
		if ok {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("load %s: wait for %s: %w", l.opts.Name, what, context.Cause(ctx))
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// WaitRequests waits until n more requests than now have finished. ctx
// bounds the wait.
func (l *Load) WaitRequests(ctx context.Context, n int) error {
	l.mu.Lock()
	want := len(l.reqs) + n
	l.mu.Unlock()
	return l.wait(ctx, fmt.Sprintf("%d requests", n), func() bool { return len(l.reqs) >= want })
}

// WaitPast waits until no request that started before at is still in
// flight: every request of a window ending at at has finished (each is
// bounded by the timeout). ctx bounds the wait.
func (l *Load) WaitPast(ctx context.Context, at time.Time) error {
	return l.wait(ctx, "the requests in flight at "+clock(at), func() bool {
		for w, busy := range l.busy {
			if busy && l.lastStart[w].Before(at) {
				return false
			}
		}
		return true
	})
}

// LoadStats describes the requests of a load that started in a window.
type LoadStats struct {
	From, To time.Time
	// Requests is the number of finished requests that were in flight
	// during the window (started before its end, ended after its start);
	// Failed of them returned an error (the timeout included).
	Requests, Failed int
	// Errors counts the failures by message (the first 120 characters).
	Errors map[string]int
	// P50, P99 and MaxLatency are latencies of those requests.
	P50, P99, MaxLatency time.Duration
	// LongestStall is the longest time within the window during which no
	// request of the load finished successfully: what the application saw
	// as the cluster standing still.
	LongestStall time.Duration
	// StallFrom is when that stall began.
	StallFrom time.Time
	// Rate is the successful requests per second of the window.
	Rate float64
}

// String formats the statistics for logs and tables.
func (s LoadStats) String() string {
	out := fmt.Sprintf("%d requests in %.1fs (%.0f/s ok), %d failed, latency p50 %v p99 %v max %v, longest stall %v (from %s)",
		s.Requests, s.To.Sub(s.From).Seconds(), s.Rate, s.Failed, s.P50.Round(100*time.Microsecond), s.P99.Round(time.Millisecond),
		s.MaxLatency.Round(time.Millisecond), s.LongestStall.Round(time.Millisecond), clock(s.StallFrom))
	if len(s.Errors) > 0 {
		out += fmt.Sprintf("; errors: %v", s.Errors)
	}
	return out
}

// Stats returns the statistics of the requests in flight during [from,
// to). Call WaitPast(to) first, or requests still in flight are left out.
func (l *Load) Stats(from, to time.Time) LoadStats {
	s := LoadStats{From: from, To: to, Errors: map[string]int{}}
	var lat []time.Duration
	var done []time.Time // successful completions within the window
	for _, r := range l.Requests() {
		if !r.End.Before(from) && r.End.Before(to) && r.Err == "" {
			done = append(done, r.End)
		}
		if !r.End.After(from) || !r.Start.Before(to) {
			continue // not in flight during the window
		}
		s.Requests++
		lat = append(lat, r.End.Sub(r.Start))
		if r.Err != "" {
			s.Failed++
			msg := r.Err
			if len(msg) > 120 {
				msg = msg[:120]
			}
			s.Errors[msg]++
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		s.P50, s.P99, s.MaxLatency = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	}
	slices.SortFunc(done, func(a, b time.Time) int { return a.Compare(b) })
	prev := from
	for _, d := range append(done, to) {
		if gap := d.Sub(prev); gap > s.LongestStall {
			s.LongestStall, s.StallFrom = gap, prev
		}
		prev = d
	}
	if secs := to.Sub(from).Seconds(); secs > 0 {
		s.Rate = float64(len(done)) / secs
	}
	return s
}

// Unexplained returns the requests of the window [from, to) that failed
// and that no single defrag of ds explains: a request explained by a defrag
// waited, from its start to its end (within slack), while that defrag ran —
// a client stuck on a member that defragments longer than its timeout,
// which no coordination can spare it.
func (l *Load) Unexplained(from, to time.Time, ds []Defrag, slack time.Duration) (failed, unexplained []Request) {
	for _, r := range l.Requests() {
		if r.Err == "" || !r.End.After(from) || !r.Start.Before(to) {
			continue
		}
		failed = append(failed, r)
		explained := false
		for _, d := range ds {
			end := d.End
			if d.Running() {
				end = to
			}
			if !d.Start.After(r.Start.Add(slack)) && !end.Before(r.End.Add(-slack)) {
				explained = true
				break
			}
		}
		if !explained {
			unexplained = append(unexplained, r)
		}
	}
	return failed, unexplained
}

// errLoadFailed is returned by CheckNoFailures.
var errLoadFailed = errors.New("failed requests")

// CheckNoFailures returns an error naming the failures of s, or nil.
func (s LoadStats) CheckNoFailures() error {
	if s.Failed == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d of %d (%v)", errLoadFailed, s.Failed, s.Requests, s.Errors)
}
