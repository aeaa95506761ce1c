package agent

import (
	"slices"
	"testing"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

// The fast tier: the agent's decisions as pure functions of what it read,
// without etcd (go test -short runs only these and the other tests that
// need no cluster).

// TestFollowerState: how the leader's agent classifies a follower member
// from its agents' announcements, the leader's pending announcement being
// at revision 10.
func TestFollowerState(t *testing.T) {
	const member = 0xf
	ann := func(rev int64, s coord.State, reason Reason) coord.Announcement {
		return coord.Announcement{Member: member, Revision: rev, State: s, Reason: string(reason)}
	}
	tests := []struct {
		name string
		anns []coord.Announcement
		want followerState
	}{
		{"decided after the leader asked", []coord.Announcement{ann(11, coord.StateIdle, ReasonRuleFalse)}, followerResolved},
		{"defragmented after the leader asked", []coord.Announcement{ann(12, coord.StateIdle, "")}, followerResolved},
		{"dry run after the leader asked", []coord.Announcement{ann(12, coord.StateIdle, ReasonDryRun)}, followerResolved},
		{"held back by an unhealthy member", []coord.Announcement{ann(12, coord.StateIdle, ReasonUnhealthy)}, followerUndecided},
		{"held back by the lock", []coord.Announcement{ann(12, coord.StateIdle, ReasonLockTimeout)}, followerUndecided},
		{"decided before the leader asked", []coord.Announcement{ann(9, coord.StateIdle, ReasonRuleFalse)}, followerWaiting},
		{"pending", []coord.Announcement{ann(11, coord.StatePending, "")}, followerWaiting},
		{"started after the leader asked, nothing decided", []coord.Announcement{ann(11, coord.StateStarting, "")}, followerWaiting},
		{"in a turn", []coord.Announcement{ann(11, coord.StateDefragmenting, "")}, followerWaiting},
		{"its member did not answer", []coord.Announcement{ann(11, coord.StateIdle, ReasonUnavailable)}, followerUndecided},
		{"its session ended", []coord.Announcement{ann(11, coord.StateIdle, ReasonSessionLost)}, followerUndecided},
		{"one agent undecided, another decided", []coord.Announcement{
			ann(11, coord.StateIdle, ReasonUnavailable), ann(12, coord.StateIdle, ReasonCooldown)}, followerResolved},
		{"one agent undecided, another pending", []coord.Announcement{
			ann(11, coord.StateIdle, ReasonUnavailable), ann(12, coord.StatePending, "")}, followerWaiting},
		{"another member's agent decided", []coord.Announcement{{Member: 0xa, Revision: 11, State: coord.StateIdle}, ann(9, coord.StateIdle, "")}, followerWaiting},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mine := slices.DeleteFunc(slices.Clone(tt.anns), func(a coord.Announcement) bool { return a.Member != member })
			if got := classifyFollower(mine, 10, false); got != tt.want {
				t.Errorf("classifyFollower = %d, want %d", got, tt.want)
			}
		})
	}
	if got := classifyFollower(nil, 10, false); got != followerNoAgent {
		t.Errorf("no agent, not defragmented: %d, want %d", got, followerNoAgent)
	}
	if got := classifyFollower(nil, 10, true); got != followerResolved {
		t.Errorf("no agent, defragmented since the cycle began: %d, want %d", got, followerResolved)
	}
}
