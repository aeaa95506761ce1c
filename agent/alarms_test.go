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
		"memberID:1  alarm:CORRUPT", // etcd 3.7's protobuf text varies the spaces
		"etcdserver: no leader",
	}
	got, unread := parseAlarms(errs)
	if unread {
		t.Errorf("parseAlarms(%q) reports an alarm it cannot read", errs)
	}
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
	for _, e := range []string{"memberID:2 alarm:SOMETHING_NEW", "memberID:x alarm:NOSPACE", "member_id: 3 alarm: NOSPACE"} {
		if _, unread := parseAlarms([]string{e}); !unread {
			t.Errorf("parseAlarms(%q) does not report an alarm it cannot read: the agent would not ask AlarmList", e)
		}
	}
}
