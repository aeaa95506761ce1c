package agent

import (
	"testing"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

// TestFollowerState: how the leader's agent classifies a follower member
// from its agents' announcements, the leader's pending announcement being
// at revision 10.
func TestFollowerState(t *testing.T) {
	const member = 0xf
	ann := func(rev int64, s lock.State, reason Reason) lock.Announcement {
		return lock.Announcement{Member: member, Revision: rev, State: s, Reason: string(reason)}
	}
	tests := []struct {
		name string
		anns []lock.Announcement
		want followerState
	}{
		{"decided after the leader asked", []lock.Announcement{ann(11, lock.StateIdle, ReasonRuleFalse)}, followerResolved},
		{"defragmented after the leader asked", []lock.Announcement{ann(12, lock.StateIdle, "")}, followerResolved},
		{"dry run after the leader asked", []lock.Announcement{ann(12, lock.StateIdle, ReasonDryRun)}, followerResolved},
		{"held back by an unhealthy member", []lock.Announcement{ann(12, lock.StateIdle, ReasonUnhealthy)}, followerUndecided},
		{"held back by the lock", []lock.Announcement{ann(12, lock.StateIdle, ReasonLockTimeout)}, followerUndecided},
		{"decided before the leader asked", []lock.Announcement{ann(9, lock.StateIdle, ReasonRuleFalse)}, followerWaiting},
		{"pending", []lock.Announcement{ann(11, lock.StatePending, "")}, followerWaiting},
		{"started after the leader asked, nothing decided", []lock.Announcement{ann(11, lock.StateStarting, "")}, followerWaiting},
		{"in a turn", []lock.Announcement{ann(11, lock.StateDefragmenting, "")}, followerWaiting},
		{"its member did not answer", []lock.Announcement{ann(11, lock.StateIdle, ReasonUnavailable)}, followerUndecided},
		{"its session ended", []lock.Announcement{ann(11, lock.StateIdle, ReasonSessionLost)}, followerUndecided},
		{"one agent undecided, another decided", []lock.Announcement{
			ann(11, lock.StateIdle, ReasonUnavailable), ann(12, lock.StateIdle, ReasonCooldown)}, followerResolved},
		{"one agent undecided, another pending", []lock.Announcement{
			ann(11, lock.StateIdle, ReasonUnavailable), ann(12, lock.StatePending, "")}, followerWaiting},
		{"another member's agent decided", []lock.Announcement{{Member: 0xa, Revision: 11, State: lock.StateIdle}, ann(9, lock.StateIdle, "")}, followerWaiting},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &cycle{announcedRev: 10}
			got, err := c.follower(t.Context(), member, tt.anns)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("state = %d, want %d", got, tt.want)
			}
		})
	}
}
