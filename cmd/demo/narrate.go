package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// narrator prints the round's events, one time-stamped line each. Events come
// from several goroutines and sources (etcd's log lines, a watch on the
// agents' keys, the agents' log events), each with the time it happened; the
// narrator holds every line for a moment and prints them in time order.
type narrator struct {
	out  io.Writer
	hold time.Duration // how long a line waits for earlier ones to arrive

	mu      sync.Mutex
	t0      time.Time // times are printed relative to it
	seq     int
	pending []line
	closed  bool

	stop chan struct{}
	done chan struct{}
}

type line struct {
	at        time.Time
	seq       int
	src, text string
}

// narrateHold is how late an event may arrive and still be told in order.
const narrateHold = 200 * time.Millisecond

// newNarrator starts a narrator; Close stops it.
func newNarrator(out io.Writer) *narrator {
	n := &narrator{out: out, hold: narrateHold, stop: make(chan struct{}), done: make(chan struct{})}
	go n.loop()
	return n
}

// start sets the instant the printed times count from.
func (n *narrator) start(t0 time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.t0 = t0
}

// say queues a line about an event at time at, from source src. Lines said
// after Close are dropped.
func (n *narrator) say(at time.Time, src, format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.seq++
	n.pending = append(n.pending, line{at: at, seq: n.seq, src: src, text: fmt.Sprintf(format, args...)})
}

func (n *narrator) loop() {
	defer close(n.done)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-n.stop:
			n.flush(time.Time{})
			return
		case now := <-tick.C:
			n.flush(now.Add(-n.hold))
		}
	}
}

// flush prints the pending lines up to the time upTo (all with a zero upTo),
// in time order.
func (n *narrator) flush(upTo time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	slices.SortFunc(n.pending, func(a, b line) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.seq - b.seq
	})
	i := 0
	for ; i < len(n.pending); i++ {
		l := n.pending[i]
		if !upTo.IsZero() && l.at.After(upTo) {
			break
		}
		fmt.Fprintf(n.out, "  %+8.3fs  %-5s  %s\n", l.at.Sub(n.t0).Seconds(), l.src, l.text)
	}
	n.pending = slices.Delete(n.pending, 0, i)
}

// Close prints what is pending and stops the narrator.
func (n *narrator) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	n.mu.Unlock()
	close(n.stop)
	<-n.done
}

// agentHandler is the slog handler of one agent: it turns the agent's log
// events into narrative lines and, with -v, also passes them to raw.
type agentHandler struct {
	name string // the member's name
	n    *narrator
	raw  slog.Handler // nil without -v
}

func (h *agentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || (h.raw != nil && h.raw.Enabled(ctx, l))
}

func (h *agentHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.raw != nil && h.raw.Enabled(ctx, r.Level) {
		_ = h.raw.Handle(ctx, r) // stderr; nothing to do about a failed write
	}
	if r.Level >= slog.LevelInfo {
		h.narrate(r)
	}
	return nil
}

func (h *agentHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	if c.raw != nil {
		c.raw = c.raw.WithAttrs(attrs)
	}
	return &c
}

func (h *agentHandler) WithGroup(name string) slog.Handler {
	c := *h
	if c.raw != nil {
		c.raw = c.raw.WithGroup(name)
	}
	return &c
}

// narrate tells one log event of the agent. The events that other sources
// tell better are left out: the defrag itself (etcd's own log lines) and the
// session (its announcement in etcd).
func (h *agentHandler) narrate(r slog.Record) {
	attrs := map[string]slog.Value{}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.Resolve()
		return true
	})
	who := h.name + "'s agent"
	if v, ok := attrs["is_leader"]; ok && v.Kind() == slog.KindBool && v.Bool() {
		who += " (leader)"
	}
	var text string
	switch r.Message {
	case "session started", "defragmenting", "defragmented":
		return
	case "leader waits for followers":
		text = fmt.Sprintf("%s (leader) waits until the followers have had their turn: %s", h.name+"'s agent",
			names(attrs["followers_waiting"]))
		if absent := names(attrs["followers_without_agent"]); absent != "" {
			text += "; no agent seen beside " + absent
		}
	case "cycle":
		text = cycleText(who, attrs)
	default:
		text = who + ": " + r.Message
		if e, ok := attrs["err"]; ok {
			text += ": " + e.String()
		}
	}
	if r.Level >= slog.LevelWarn {
		text = r.Level.String() + " " + text
	}
	h.n.say(r.Time, "agent", "%s", text)
}

// cycleText tells the one event that ends an agent's cycle.
func cycleText(who string, attrs map[string]slog.Value) string {
	str := func(k string) string {
		if v, ok := attrs[k]; ok {
			return v.String()
		}
		return ""
	}
	num := func(k string) float64 {
		switch v := attrs[k]; v.Kind() {
		case slog.KindFloat64:
			return v.Float64()
		case slog.KindInt64:
			return float64(v.Int64())
		}
		return 0
	}
	why := str("reason")
	if e := str("err"); e != "" {
		why += ": " + e
	}
	switch dec := str("decision"); dec {
	case "defragmented":
		var took []string
		for _, t := range []struct{ key, what string }{
			{"leader_wait_seconds", "waiting for the followers"},
			{"lock_wait_seconds", "waiting for the lock"},
			{"defrag_seconds", "defragmenting"},
		} {
			if v := num(t.key); v >= 0.005 {
				took = append(took, fmt.Sprintf("%.2f s %s", v, t.what))
			}
		}
		return fmt.Sprintf("%s: cycle done, defragmented, %s reclaimed (%s)",
			who, mib(int64(num("reclaimed_bytes"))), strings.Join(took, ", "))
	case "skipped":
		return fmt.Sprintf("%s: cycle done, no defrag (%s)", who, why)
	case "failed":
		return fmt.Sprintf("%s: cycle FAILED (%s)", who, why)
	default:
		return fmt.Sprintf("%s: cycle done, %s", who, dec)
	}
}

// names lists the member names of a log attribute that holds the agent's
// "name (id)" strings.
func names(v slog.Value) string {
	list, _ := v.Any().([]string)
	out := make([]string, 0, len(list))
	for _, s := range list {
		name, _, _ := strings.Cut(s, " (")
		out = append(out, name)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}
