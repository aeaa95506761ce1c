//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdlog"
)

// Sampling of the members' metrics.
const (
	// sampleEvery is the period of each member's metrics sampler: the
	// issue asks for at most 20 ms, and no less, because a scrape costs etcd
	// about 3.6 ms of CPU (its /metrics page is 160 KB, mostly gRPC
	// counters): three members at 20 ms take a quarter of a 2-core machine.
	sampleEvery = 20 * time.Millisecond
	// scrapesInFlight bounds the concurrent scrapes of one member.
	scrapesInFlight = 2
	// sampleTimeout bounds one scrape; a stopped member costs one timeout
	// per sample.
	sampleTimeout = 500 * time.Millisecond
	// tailEvery is the pause of a log tailer at the end of a log file.
	tailEvery = 5 * time.Millisecond
	// gaugeCheckThreshold: a logged defrag at least this long must show in
	// the inflight samples taken inside it, or the sampler is broken.
	gaugeCheckThreshold = 200 * time.Millisecond
)

// The log messages of etcd's own account of a defragmentation, in every
// line from 3.4 to 3.7.
const (
	msgDefragStart  = etcdlog.MsgStart
	msgDefragEnd    = etcdlog.MsgEnd
	msgDefragEnd34  = etcdlog.MsgEnd34
	msgDefragFailed = etcdlog.MsgFailed
)

// Defrag is one defragmentation of one member, as the member logged it:
// from its "defragmenting" line until its "finished defragmenting directory"
// ("defragmented" on 3.4) or "failed to defragment" line. If the member's
// process exited first, End is the time the harness saw it exit.
type Defrag = etcdlog.Defrag

// Sample is one scrape of a member's metrics.
type Sample struct {
	// Start and End bracket the request: etcd read its gauges at some
	// moment in between.
	Start, End time.Time
	// OK is false when the scrape failed (member down or stopped).
	OK bool
	// Inflight is etcd_disk_defrag_inflight == 1; Leader is
	// etcd_server_is_leader == 1.
	Inflight, Leader bool
}

// Announcement is one change of an agent's announcement under
// <prefix>agents/<member>/<lease>, as the observer's watch saw it.
type Announcement struct {
	Member   uint64
	Lease    int64
	Revision int64 // etcd's revision of the change
	Deleted  bool  // the key was deleted (the session ended)
	// State, Leader, Reason, Agent and Time are the announcement's fields:
	// the agent's state, whether its member led, the reason of its last
	// decision ("" after a defrag), the agent's identity (host/PID, see
	// Agent.Identity) and the agent's clock when it sent it.
	State  string
	Leader bool
	Reason string
	Agent  string
	Time   time.Time
	// Seen is when the observer received the change.
	Seen time.Time
}

// active reports whether the announcement asks for, or is in, a turn ("verifying"
// comes after the turn, once the lock is released).
func (a Announcement) active() bool {
	return !a.Deleted && a.State != "idle" && a.State != "verifying" && a.State != ""
}

// Observer is the outside observer of one Cluster: it judges the agents
// from etcd's own account only. From NewCluster until the cleanup it
//   - samples every member's etcd_disk_defrag_inflight and
//     etcd_server_is_leader from its metrics URL every 20 ms (one goroutine
//     and one keep-alive connection per member);
//   - tails every member's JSON log for the defrag lines (Defrags);
//   - watches the keys under the cluster's lock prefix (the agents'
//     announcements).
//
// At the cluster's cleanup it fails the test on any two members
// defragmenting at the same time (I1), by the log intervals or by the
// samples, and on a leader whose own agent took its turn while a follower's
// agent was pending (I3). Its methods are safe for concurrent use.
type Observer struct {
	c *Cluster

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	exits  map[string]chan time.Time // member name → its tailer's exit notices

	mu        sync.Mutex
	started   bool
	defrags   []Defrag
	open      map[string]int // member name → index of its running defrag
	samples   map[string][]Sample
	anns      []Announcement
	keyEvents []KeyEvent
	watchErrs []string
	changed   chan struct{} // closed and replaced on every change
}

func newObserver(c *Cluster) *Observer {
	ctx, cancel := context.WithCancel(context.Background())
	o := &Observer{
		c: c, ctx: ctx, cancel: cancel,
		exits:   make(map[string]chan time.Time),
		open:    make(map[string]int),
		samples: make(map[string][]Sample),
		changed: make(chan struct{}),
	}
	for _, m := range c.members {
		o.exits[m.Name] = make(chan time.Time, 16)
	}
	return o
}

// start starts the samplers, tailers and the watch; the members' IDs are
// known.
func (o *Observer) start(ctx context.Context) error {
	cli := o.c.Client()
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	resp, err := cli.Get(rctx, o.c.LockPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("observer: read %s: %w", o.c.LockPrefix, err)
	}
	o.mu.Lock()
	o.started = true
	o.mu.Unlock()
	for _, m := range o.c.members {
		if !o.c.opts.NoGaugeSampling {
			o.wg.Go(func() { o.sample(m) })
		}
		o.wg.Go(func() { o.tail(m) })
	}
	o.wg.Go(func() { o.watch(cli, resp.Header.Revision) })
	return nil
}

// stop ends the observation: the tailers read their logs to the end first.
func (o *Observer) stop() {
	o.cancel()
	o.wg.Wait()
}

func (o *Observer) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// memberExited tells the member's tailer that its process exited at.
func (o *Observer) memberExited(m *Member, at time.Time) {
	select {
	case o.exits[m.Name] <- at:
	default: // the tailer has a backlog of exits; the first one closes the interval
	}
}

// sample scrapes one member's metrics until the observer stops: a scrape
// starts every sampleEvery, with up to scrapesInFlight at a time, so that
// one slow answer (a busy machine) does not delay the next sample.
func (o *Observer) sample(m *Member) {
	client := &http.Client{
		Timeout: sampleTimeout,
		// No gzip: it would cost etcd more CPU than the loopback bytes.
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: scrapesInFlight},
	}
	defer client.CloseIdleConnections()
	url := m.MetricsURL + "/metrics"
	bufs := make(chan *bytes.Buffer, scrapesInFlight) // also the semaphore
	for range scrapesInFlight {
		bufs <- new(bytes.Buffer)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-o.ctx.Done():
			return
		case <-tick.C:
		}
		var buf *bytes.Buffer
		select {
		case buf = <-bufs:
		default:
			continue // every scrape is still running: this tick is lost
		}
		wg.Go(func() {
			defer func() { bufs <- buf }()
			s := scrape(o.ctx, client, url, buf)
			if o.ctx.Err() == nil {
				o.addSample(m.Name, s)
			}
		})
	}
}

// addSample inserts a sample in start order.
func (o *Observer) addSample(member string, s Sample) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ss := o.samples[member]
	i := len(ss)
	for i > 0 && ss[i-1].Start.After(s.Start) {
		i--
	}
	var prev Sample
	if i > 0 {
		prev = ss[i-1]
	}
	o.samples[member] = slices.Insert(ss, i, s)
	if s.OK != prev.OK || s.Inflight != prev.Inflight || s.Leader != prev.Leader {
		o.notifyLocked()
	}
}

// scrape reads the two gauges from a metrics page into s; buf is reused
// between scrapes.
func scrape(ctx context.Context, client *http.Client, url string, buf *bytes.Buffer) Sample {
	s := Sample{Start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		s.End = time.Now()
		return s
	}
	resp, err := client.Do(req)
	if err != nil {
		s.End = time.Now()
		return s
	}
	buf.Reset()
	_, err = buf.ReadFrom(resp.Body)
	_ = resp.Body.Close()
	s.End = time.Now()
	if err != nil || resp.StatusCode != http.StatusOK {
		return s
	}
	inflight, ok1 := gauge(buf.Bytes(), "etcd_disk_defrag_inflight")
	leader, ok2 := gauge(buf.Bytes(), "etcd_server_is_leader")
	s.OK, s.Inflight, s.Leader = ok1 && ok2, inflight, leader
	return s
}

// gauge finds the unlabelled sample `name value` in a text-format page and
// reports whether its value is 1.
func gauge(page []byte, name string) (one, found bool) {
	needle := []byte("\n" + name + " ")
	i := bytes.Index(page, needle)
	if i < 0 {
		return false, false
	}
	rest := page[i+len(needle):]
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	return string(bytes.TrimSpace(rest)) == "1", true
}

// logLine is the part of an etcd JSON log line the observer reads.
type logLine struct {
	TS    string `json:"ts"`
	Msg   string `json:"msg"`
	Error string `json:"error"`
	Size  int64  `json:"current-db-size-bytes"` // before (start entry), after (end entry)
}

// parseTS parses etcd's log timestamps: 3.4 writes milliseconds
// (2006-01-02T15:04:05.000Z0700), 3.5+ microseconds; Go accepts any
// fraction after the seconds.
func parseTS(s string) (time.Time, error) {
	return time.Parse("2006-01-02T15:04:05Z0700", s)
}

// tail follows one member's log file until the observer stops, then reads
// it to its end.
func (o *Observer) tail(m *Member) {
	var f *os.File
	defer func() {
		if f != nil {
			_ = f.Close()
		}
	}()
	var r *bufio.Reader
	var partial string
	// drain reads every complete line there is now.
	drain := func() {
		if f == nil {
			var err error
			if f, err = os.Open(m.LogPath); err != nil {
				return // not created yet
			}
			r = bufio.NewReaderSize(f, 256<<10)
		}
		for {
			s, err := r.ReadString('\n')
			partial += s
			if err != nil {
				return // EOF: the rest of the line comes later
			}
			o.logLine(m, partial)
			partial = ""
		}
	}
	tick := time.NewTicker(tailEvery)
	defer tick.Stop()
	for {
		select {
		case <-o.ctx.Done():
			drain()
			return
		case at := <-o.exits[m.Name]:
			drain() // the process is gone: its log is complete
			o.closeOpen(m, at, "member process exited")
		case <-tick.C:
			drain()
		}
	}
}

// logLine records one line of a member's log if it is a defrag line.
func (o *Observer) logLine(m *Member, line string) {
	if !strings.Contains(line, "efragment") { // cheap filter: every defrag message has it
		return
	}
	var l logLine
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		return
	}
	switch l.Msg {
	case msgDefragStart, msgDefragEnd, msgDefragEnd34, msgDefragFailed:
	default:
		return
	}
	ts, err := parseTS(l.TS)
	if err != nil {
		o.mu.Lock()
		o.watchErrs = append(o.watchErrs, fmt.Sprintf("%s: unreadable timestamp %q in %q", m.Name, l.TS, line))
		o.mu.Unlock()
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	i, running := o.open[m.Name]
	switch l.Msg {
	case msgDefragStart:
		if running {
			// A start without an end: close it at the new start.
			o.defrags[i].End, o.defrags[i].Err = ts, "no end logged"
		}
		o.open[m.Name] = len(o.defrags)
		o.defrags = append(o.defrags, Defrag{Member: m.Name, MemberID: m.ID, Start: ts, SizeBefore: l.Size})
	default:
		if !running {
			// A failure before the backend took its locks: nothing was
			// blocked.
			return
		}
		delete(o.open, m.Name)
		o.defrags[i].End, o.defrags[i].SizeAfter = ts, l.Size
		if l.Msg == msgDefragFailed {
			o.defrags[i].Err = "failed: " + l.Error
		}
	}
	o.notifyLocked()
}

// closeOpen ends a member's running defrag at the time its process exited.
func (o *Observer) closeOpen(m *Member, at time.Time, why string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if i, ok := o.open[m.Name]; ok {
		delete(o.open, m.Name)
		o.defrags[i].End, o.defrags[i].Err = at, why
		o.notifyLocked()
	}
}

// watch records every change under the lock prefix after rev.
func (o *Observer) watch(cli *clientv3.Client, rev int64) {
	agents := o.c.LockPrefix + "agents/"
	for o.ctx.Err() == nil {
		wch := cli.Watch(o.ctx, o.c.LockPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				o.mu.Lock()
				o.watchErrs = append(o.watchErrs, fmt.Sprintf("watch %s from %d: %v", o.c.LockPrefix, rev+1, err))
				o.mu.Unlock()
				if errors.Is(err, rpctypes.ErrCompacted) && wr.CompactRevision > rev {
					rev = wr.CompactRevision - 1 // changes in between are lost, and said so
				}
				break
			}
			now := time.Now()
			for _, ev := range wr.Events {
				rev = max(rev, ev.Kv.ModRevision)
				o.mu.Lock()
				o.keyEvents = append(o.keyEvents, KeyEvent{Key: string(ev.Kv.Key), Deleted: ev.Type == mvccpb.DELETE,
					Revision: ev.Kv.ModRevision, Lease: ev.Kv.Lease, Seen: now})
				o.mu.Unlock()
				a, ok := decodeAnnouncement(agents, ev)
				if !ok {
					continue
				}
				a.Seen = now
				o.mu.Lock()
				o.anns = append(o.anns, a)
				o.notifyLocked()
				o.mu.Unlock()
			}
		}
		if err := pause(o.ctx, 100*time.Millisecond); err != nil {
			return
		}
	}
}

// decodeAnnouncement reads an event on agents/<member hex>/<lease hex>.
func decodeAnnouncement(prefix string, ev *clientv3.Event) (Announcement, bool) {
	rest, ok := strings.CutPrefix(string(ev.Kv.Key), prefix)
	if !ok {
		return Announcement{}, false
	}
	memberHex, leaseHex, ok := strings.Cut(rest, "/")
	if !ok {
		return Announcement{}, false
	}
	member, err1 := strconv.ParseUint(memberHex, 16, 64)
	lease, err2 := strconv.ParseInt(leaseHex, 16, 64)
	if err1 != nil || err2 != nil {
		return Announcement{}, false
	}
	a := Announcement{Member: member, Lease: lease, Revision: ev.Kv.ModRevision}
	if ev.Type == mvccpb.DELETE {
		a.Deleted = true
		return a, true
	}
	var v struct {
		State  string    `json:"state"`
		Leader bool      `json:"leader"`
		Reason string    `json:"reason"`
		Agent  string    `json:"agent"`
		Time   time.Time `json:"time"`
	}
	if err := json.Unmarshal(ev.Kv.Value, &v); err != nil {
		return Announcement{}, false
	}
	a.State, a.Leader, a.Reason, a.Agent, a.Time = v.State, v.Leader, v.Reason, v.Agent, v.Time
	return a, true
}

// Defrags returns every defragmentation the members have logged so far, in
// the order their start lines were read, including running ones.
func (o *Observer) Defrags() []Defrag {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.defrags)
}

// Announcements returns every change of the agents' announcements seen so
// far, in watch order (ascending revisions).
func (o *Observer) Announcements() []Announcement {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.anns)
}

// Samples returns the metric samples of a member so far.
func (o *Observer) Samples(member string) []Sample {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.samples[member])
}

// Inflight reports whether the latest successful sample of the member
// showed etcd_disk_defrag_inflight == 1.
func (o *Observer) Inflight(member string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	ss := o.samples[member]
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].OK {
			return ss[i].Inflight
		}
	}
	return false
}

// Wait waits until cond returns true, re-evaluating it on every change the
// observer sees (a defrag line, an announcement, a gauge flip) and at least
// every 100 ms. what names the condition in the error. ctx bounds the wait.
func (o *Observer) Wait(ctx context.Context, what string, cond func() bool) error {
	for {
		o.mu.Lock()
		ch := o.changed
		o.mu.Unlock()
		if cond() {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for %s: %w", what, context.Cause(ctx))
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// WaitDefrags waits until at least n defragmentations have ended and
// returns all recorded by then. ctx bounds the wait.
func (o *Observer) WaitDefrags(ctx context.Context, n int) ([]Defrag, error) {
	var ds []Defrag
	err := o.Wait(ctx, fmt.Sprintf("%d finished defrags", n), func() bool {
		ds = o.Defrags()
		done := 0
		for _, d := range ds {
			if !d.Running() {
				done++
			}
		}
		return done >= n
	})
	if err != nil {
		return ds, fmt.Errorf("%w (have %v)", err, ds)
	}
	return ds, nil
}

// WaitRunning waits until some member's log shows a defrag that has started
// and not ended, and returns it. ctx bounds the wait.
func (o *Observer) WaitRunning(ctx context.Context) (Defrag, error) {
	var d Defrag
	err := o.Wait(ctx, "a running defrag", func() bool {
		for _, x := range o.Defrags() {
			if x.Running() {
				d = x
				return true
			}
		}
		return false
	})
	return d, err
}

// LeaderAt reports whether the member led at time at, by its last
// successful sample that began before at; known is false without one.
func (o *Observer) LeaderAt(member string, at time.Time) (leader, known bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ss := o.samples[member]
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].OK && ss[i].Start.Before(at) {
			return ss[i].Leader, true
		}
	}
	return false, false
}
