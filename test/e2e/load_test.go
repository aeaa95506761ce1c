//go:build linux

package e2e

// Tests of the load's statistics that need no etcd: they run in make test.

import (
	"testing"
	"time"
)

func TestLoadStats(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	req := func(w, start, end int, err string) Request {
		return Request{Worker: w, Start: at(start), End: at(end), Err: err}
	}
	l := &Load{reqs: []Request{
		req(0, 0, 10, ""),         // before the window
		req(1, 90, 110, ""),       // in flight at its start: counted
		req(0, 120, 130, ""),      // inside
		req(1, 130, 1630, ""),     // the stall: 1.5 s
		req(0, 140, 5140, "boom"), // a failure (timeout)
		req(1, 1640, 1650, ""),    // inside
		req(0, 2100, 2110, ""),    // starts after the window ends
	}}
	s := l.Stats(at(100), at(2000))
	if s.Requests != 5 || s.Failed != 1 || s.Errors["boom"] != 1 {
		t.Errorf("Stats() = %d requests, %d failed, errors %v; want 5, 1, boom once", s.Requests, s.Failed, s.Errors)
	}
	if s.MaxLatency != 5*time.Second {
		t.Errorf("MaxLatency = %v, want 5s", s.MaxLatency)
	}
	// Successful completions in the window: 110, 130, 1630, 1650; the
	// longest time without one is 130..1630.
	if s.LongestStall != 1500*time.Millisecond || !s.StallFrom.Equal(at(130)) {
		t.Errorf("LongestStall = %v from %s, want 1.5s from %s", s.LongestStall, clock(s.StallFrom), clock(at(130)))
	}
	if got, want := s.Rate, 4/1.9; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("Rate = %v, want %v", got, want)
	}
	if err := s.CheckNoFailures(); err == nil {
		t.Errorf("CheckNoFailures() = nil with a failure")
	}
	// A window with no completion at all stalls for its whole length.
	if s := l.Stats(at(3000), at(4000)); s.LongestStall != time.Second || s.Requests != 1 {
		t.Errorf("Stats(3s..4s) = %v, want a 1s stall and the one request in flight", s)
	}
}
