package etcdtest

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestRecorder feeds log entries to a member's logger as etcd writes them.
func TestRecorder(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	c := &Cluster{rec: rec}
	lg := c.memberLogger("m0")
	rec.setID("m0", 0xabc)

	lg.Info("starting defragment") // maintenance server, before the locks: ignored
	lg.Debug(msgDefragStart)       // wrong level: ignored
	if ds, _ := rec.snapshot(); len(ds) != 0 {
		t.Fatalf("after unrelated entries: %v, want none", ds)
	}
	lg.Info(msgDefragStart, zap.String("path", "db"))
	ds, _ := rec.snapshot()
	if len(ds) != 1 || !ds[0].Running() || ds[0].MemberID != 0xabc || ds[0].Member != "m0" {
		t.Fatalf("after start: %v, want one running defrag of m0 (abc)", ds)
	}
	lg.Info(msgDefragEnd)
	lg.Info("finished defragment") // maintenance server, after the locks: ignored
	lg.Info(msgDefragStart)
	lg.Warn(msgDefragFailed, zap.Error(errors.New("disk full")))
	lg.Warn(msgDefragFailed, zap.Error(errors.New("no temp file"))) // failed before the locks: ignored
	ds, _ = rec.snapshot()
	if len(ds) != 2 {
		t.Fatalf("Defrags = %v, want 2", ds)
	}
	if ds[0].Running() || ds[0].Err != "" || ds[0].End.Before(ds[0].Start) {
		t.Errorf("first = %v, want finished without error", ds[0])
	}
	if ds[1].Running() || ds[1].Err != "disk full" {
		t.Errorf("second = %v, want finished with error %q", ds[1], "disk full")
	}
}

func TestRecorderStartWithoutEnd(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	core := &captureCore{rec: rec, member: "m1"}
	t0 := time.Now()
	for _, e := range []zapcore.Entry{
		{Level: zapcore.InfoLevel, Message: msgDefragStart, Time: t0},
		{Level: zapcore.InfoLevel, Message: msgDefragStart, Time: t0.Add(time.Second)},
	} {
		if ce := core.Check(e, nil); ce != nil {
			ce.Write()
		}
	}
	ds, _ := rec.snapshot()
	if len(ds) != 2 || !ds[0].End.Equal(t0.Add(time.Second)) || ds[0].Err == "" || !ds[1].Running() {
		t.Errorf("Defrags = %v, want the first closed at the second's start with an error, the second running", ds)
	}
}
