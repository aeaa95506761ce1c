package agent

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestParseAlarms: the alarms among a Status response's errors, as etcd
// writes them (the protobuf text of an AlarmMember), and nothing else.
func TestParseAlarms(t *testing.T) {
	errs := []string{
		(&pb.AlarmMember{MemberID: 10276657743932975437, Alarm: pb.AlarmType_NOSPACE}).String(),
		"memberID:1 alarm:CORRUPT",
		"etcdserver: no leader",
		"memberID:2 alarm:SOMETHING_NEW",
		"memberID:x alarm:NOSPACE",
	}
	got := parseAlarms(errs)
	want := []*pb.AlarmMember{
		{MemberID: 10276657743932975437, Alarm: pb.AlarmType_NOSPACE},
		{MemberID: 1, Alarm: pb.AlarmType_CORRUPT},
	}
	if len(got) != len(want) {
		t.Fatalf("parseAlarms(%q) = %v, want %v", errs, got, want)
	}
	for i := range want {
		if got[i].MemberID != want[i].MemberID || got[i].Alarm != want[i].Alarm {
			t.Errorf("alarm %d = %v, want %v", i, got[i], want[i])
		}
	}
}
