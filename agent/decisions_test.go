package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
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
		t.Errorf("no agent, settled by its last attempt: %d, want %d", got, followerResolved)
	}
}

// TestNextTurnStarted: when a member's own hash after its defrag can run
// without stalling another agent's checks (member 0xa hashes).
func TestNextTurnStarted(t *testing.T) {
	ann := func(member uint64, s coord.State) coord.Announcement {
		return coord.Announcement{Member: member, State: s}
	}
	tests := []struct {
		name string
		anns []coord.Announcement
		want bool
	}{
		{"no other agent", []coord.Announcement{ann(0xa, coord.StateVerifying)}, true},
		{"the others idle or verifying", []coord.Announcement{ann(0xb, coord.StateIdle), ann(0xc, coord.StateVerifying)}, true},
		{"the leader's agent waits", []coord.Announcement{ann(0xb, coord.StatePending)}, false},
		{"the next agent checks under the lock", []coord.Announcement{ann(0xb, coord.StateLocked), ann(0xc, coord.StatePending)}, false},
		{"the next member defragments", []coord.Announcement{ann(0xb, coord.StateDefragmenting), ann(0xc, coord.StatePending)}, true},
		{"another agent of this member pending", []coord.Announcement{ann(0xa, coord.StatePending), ann(0xb, coord.StateIdle)}, true},
		{"another agent of this member defragmenting, the next checks", []coord.Announcement{ann(0xa, coord.StateDefragmenting), ann(0xb, coord.StateLocked)}, false},
	}
	for _, tt := range tests {
		if got := nextTurnStarted(tt.anns, 0xa); got != tt.want {
			t.Errorf("%s: nextTurnStarted = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestPlanCheck: where the HashKV check of member 0xa's defrag (at
// revision 500 now) hashes, from the other members' last-defrag records: at
// the revision of the newest check of the round, compared with the hash of
// the member that made it, or at its own revision with a peer hashed during
// the defrag.
func TestPlanCheck(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	st := memberStatus{ID: 0xa, Leader: 0xc, Revision: 500}
	voting := []*pb.Member{{ID: 0xa, ClientURLs: []string{"a"}}, {ID: 0xb, ClientURLs: []string{"b"}}, {ID: 0xc, ClientURLs: []string{"c"}}}
	rec := func(verify string, rev int64, ago time.Duration) coord.Last {
		return coord.Last{End: now.Add(-ago), Verify: verify, Check: &coord.Check{Revision: rev}}
	}
	tests := []struct {
		name   string
		others map[uint64]coord.Last
		voting []*pb.Member
		want   checkPlan
	}{
		{"first of the round", nil, voting, checkPlan{rev: 500}},
		{"the member before still checks", map[uint64]coord.Last{0xb: rec(coord.VerifyPending, 400, 2*time.Second)}, voting, checkPlan{rev: 400, ref: 0xb}},
		{"the member before passed", map[uint64]coord.Last{0xb: rec(coord.VerifyOK, 400, time.Minute)}, voting, checkPlan{rev: 400, ref: 0xb}},
		{"the newest of two", map[uint64]coord.Last{
			0xb: rec(coord.VerifyOK, 400, time.Minute), 0xc: rec(coord.VerifyPending, 300, time.Second)}, voting, checkPlan{rev: 300, ref: 0xc}},
		{"its check failed", map[uint64]coord.Last{0xb: rec(coord.VerifyFailed, 400, time.Second)}, voting, checkPlan{rev: 500}},
		{"a failed newest, a passed older", map[uint64]coord.Last{
			0xb: rec(coord.VerifyOK, 400, time.Minute), 0xc: rec(coord.VerifyFailed, 450, time.Second)}, voting, checkPlan{rev: 400, ref: 0xb}},
		{"an earlier round", map[uint64]coord.Last{0xb: rec(coord.VerifyOK, 400, referenceMaxAge+time.Second)}, voting, checkPlan{rev: 500}},
		{"no check (verification off)", map[uint64]coord.Last{0xb: {End: now.Add(-time.Second)}}, voting, checkPlan{rev: 500}},
		{"a revision this member has not applied", map[uint64]coord.Last{0xb: rec(coord.VerifyPending, 501, time.Second)}, voting, checkPlan{rev: 500}},
		{"a member no longer voting", map[uint64]coord.Last{0xb: rec(coord.VerifyOK, 400, time.Second)}, []*pb.Member{voting[0], voting[2]}, checkPlan{rev: 500}},
	}
	for _, tt := range tests {
		if got := planCheck(tt.others, tt.voting, st, now); got != tt.want {
			t.Errorf("%s: planCheck = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// TestNeedier: which followers in a turn go before member 0xa, whose file is
// at 60 % of its quota with 100 bytes to reclaim.
func TestNeedier(t *testing.T) {
	mine := need{usage: 0.6, free: 100, id: 0xa}
	ann := func(member uint64, s coord.State, usage float64, free int64) coord.Announcement {
		return coord.Announcement{Member: member, State: s, DBQuotaUsage: usage, DBSizeFree: free}
	}
	leaderAnn := ann(0xf, coord.StatePending, 0.99, 1000)
	leaderAnn.Leader = true
	tests := []struct {
		name string
		anns []coord.Announcement
		want []string
	}{
		{"none", nil, nil},
		{"nearer its quota", []coord.Announcement{ann(0xb, coord.StatePending, 0.7, 50)}, []string{"b"}},
		{"farther from its quota, more to reclaim", []coord.Announcement{ann(0xb, coord.StatePending, 0.5, 500)}, nil},
		{"as near, more to reclaim", []coord.Announcement{ann(0xb, coord.StatePending, 0.6, 101)}, []string{"b"}},
		{"as near, as much, lower ID", []coord.Announcement{ann(0x9, coord.StatePending, 0.6, 100)}, []string{"9"}},
		{"as near, as much, higher ID", []coord.Announcement{ann(0xb, coord.StatePending, 0.6, 100)}, nil},
		{"needier but idle", []coord.Announcement{ann(0xb, coord.StateIdle, 0.9, 500)}, nil},
		{"needier, verifying", []coord.Announcement{ann(0xb, coord.StateVerifying, 0.9, 500)}, nil},
		{"needier, defragmenting", []coord.Announcement{ann(0xb, coord.StateDefragmenting, 0.9, 500)}, []string{"b"}},
		{"the leader is never ahead", []coord.Announcement{leaderAnn}, nil},
		{"another agent of this member", []coord.Announcement{ann(0xa, coord.StatePending, 0.9, 500)}, nil},
		{"two agents of one needier member", []coord.Announcement{ann(0xc, coord.StatePending, 0.8, 1), ann(0xc, coord.StateLocked, 0.8, 1), ann(0xb, coord.StatePending, 0.1, 1)}, []string{"c"}},
	}
	for _, tt := range tests {
		if got := needier(tt.anns, mine); !slices.Equal(got, tt.want) {
			t.Errorf("%s: needier = %q, want %q", tt.name, got, tt.want)
		}
	}
	// Two followers that compare what they announced never both yield
	// (make test-busy found two that compared a fresh status with the
	// other's announcement, and waited for each other).
	needs := []need{{0.5, 100, 1}, {0.5, 100, 2}, {0.5, 99, 3}, {0.6, 1, 4}, {0.4, 1000, 5}}
	for _, x := range needs {
		for _, y := range needs {
			if x.id == y.id {
				continue
			}
			ax := coord.Announcement{Member: x.id, State: coord.StatePending, DBQuotaUsage: x.usage, DBSizeFree: x.free}
			ay := coord.Announcement{Member: y.id, State: coord.StatePending, DBQuotaUsage: y.usage, DBSizeFree: y.free}
			if xy, yx := len(needier([]coord.Announcement{ay}, x)), len(needier([]coord.Announcement{ax}, y)); xy+yx != 1 {
				t.Errorf("%+v and %+v: %d and %d ahead, want exactly one of them ahead of the other", x, y, xy, yx)
			}
		}
	}
}

func TestFollowerSettled(t *testing.T) {
	start := time.Date(2026, 12, 5, 20, 0, 0, 0, time.UTC)
	now := start.Add(3 * time.Second)
	tests := []struct {
		name     string
		end      time.Time
		cooldown time.Duration
		want     bool
	}{
		{"ended after the leader's cycle began", start.Add(time.Second), 0, true},
		{"ended before it, within the cooldown", start.Add(-10 * time.Second), time.Minute, true},
		{"ended before it, cooldown passed", start.Add(-2 * time.Minute), time.Minute, false},
		{"ended before it, no cooldown", start.Add(-time.Second), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := followerSettled(coord.Last{End: tt.end}, start, now, tt.cooldown); got != tt.want {
				t.Errorf("followerSettled = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLeaderWaitVerdict(t *testing.T) {
	asked := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const ttl = 30 * time.Second
	deadline := asked.Add(10 * time.Minute)
	tests := []struct {
		name            string
		waiting, absent int
		now             time.Time
		want            waitVerdict
	}{
		{"every follower had its say", 0, 0, asked.Add(time.Second), waitDone},
		{"a follower without an agent, within one TTL", 0, 1, asked.Add(ttl - time.Second), waitOn},
		{"a follower without an agent, after one TTL", 0, 1, asked.Add(ttl), waitGoOn},
		{"a follower in a turn", 1, 0, asked.Add(time.Hour / 60), waitOn},
		{"a follower in a turn, and one without an agent after one TTL", 1, 1, asked.Add(ttl), waitOn},
		{"a follower in a turn at the deadline", 1, 0, deadline, waitTimedOut},
		{"only followers without an agent at the deadline", 0, 2, deadline, waitGoOn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := leaderWaitVerdict(tc.waiting, tc.absent, tc.now, asked, deadline, ttl); got != tc.want {
				t.Errorf("leaderWaitVerdict(%d, %d, +%v) = %d, want %d", tc.waiting, tc.absent, tc.now.Sub(asked), got, tc.want)
			}
		})
	}
}

func TestInCooldown(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	last := &coord.Last{End: now.Add(-30 * time.Second)}
	tests := []struct {
		name     string
		last     *coord.Last
		cooldown time.Duration
		want     bool
	}{
		{"never defragmented", nil, time.Minute, false},
		{"within the cooldown", last, time.Minute, true},
		{"after the cooldown", last, 20 * time.Second, false},
		{"cooldown off", last, 0, false},
	}
	for _, tc := range tests {
		if got := inCooldown(tc.last, now, tc.cooldown); got != tc.want {
			t.Errorf("%s: inCooldown = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestGuardMessages: the guards' refusals, word for word.
func TestGuardMessages(t *testing.T) {
	g := guards{maxDuration: 30 * time.Second, dataDir: "/var/lib/etcd", headroom: 0.2}
	if got := g.probeBudget(4<<30, 20*time.Second, rateOwn); got != "" {
		t.Errorf("a forecast within the budget is refused: %q", got)
	}
	if got := (guards{}).probeBudget(8<<30, time.Hour, rateDefault); got != "" {
		t.Errorf("the guard is off, yet: %q", got)
	}
	want := "a defrag of 4.0 GiB in use is forecast to take 1m22s (copy rate from the default of 50.0 MiB/s: no member has a recorded defrag yet), " +
		"more than --max-defrag-duration 30s: etcd's liveness probe could kill the member mid-defrag; " +
		"raise the probe's failureThreshold and --max-defrag-duration with it, or shrink the data in use"
	if got := g.probeBudget(4<<30, expectedDuration(4<<30, defaultCopyRate), rateDefault); got != want {
		t.Errorf("probeBudget:\n got %q\nwant %q", got, want)
	}
	if got := g.diskSpace(4<<30, -1); got != "" {
		t.Errorf("the disk is not measured, yet: %q", got)
	}
	if got := g.diskSpace(4<<30, 5<<30); got != "" {
		t.Errorf("5 GiB free for 4 GiB in use is refused: %q", got)
	}
	want = "1.7 GiB free on the filesystem of --data-dir /var/lib/etcd, a defrag needs 4.8 GiB " +
		"(the 4.0 GiB in use, which etcd copies into a new file next to the database, and --disk-headroom 20%): grow the volume or free space on it"
	if got := g.diskSpace(4<<30, 1700<<20); got != want {
		t.Errorf("diskSpace:\n got %q\nwant %q", got, want)
	}
}

// TestDefragOutcome: how the end of a defrag is classified, and what the
// cycle then says, word for word.
func TestDefragOutcome(t *testing.T) {
	const ep = "https://10.0.0.1:2379"
	timeout := status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	tests := []struct {
		name   string
		d      defragDone
		shrank bool
		want   Reason
		msg    string
	}{
		{name: "done", d: defragDone{}, shrank: true},
		{name: "done, nothing to reclaim", d: defragDone{}, shrank: false},
		{name: "the request timed out, etcd went on", d: defragDone{requestErr: timeout}, shrank: true},
		{
			name: "the request timed out, and the file did not shrink", d: defragDone{requestErr: timeout}, want: ReasonUnavailable,
			msg: "defragment https://10.0.0.1:2379: rpc error: code = DeadlineExceeded desc = context deadline exceeded; the member answers, but its file did not shrink: etcd probably never ran the defrag",
		},
		{
			name: "etcd 3.4's timeout", d: defragDone{requestErr: status.Error(codes.Unknown, "context deadline exceeded")}, shrank: true,
		},
		{
			name: "permission denied", d: defragDone{requestErr: rpctypes.ErrPermissionDenied}, want: ReasonPermission,
			msg: "defragment https://10.0.0.1:2379: etcdserver: permission denied",
		},
		{
			name: "another error", d: defragDone{requestErr: errors.New("connection reset")}, want: ReasonUnavailable,
			msg: "defragment https://10.0.0.1:2379: connection reset",
		},
		{
			name: "the member exited while the agent shut down", d: defragDone{answerErr: fmt.Errorf("%w: it refuses connections while the agent shuts down (last read: connection refused)", errMemberGone)},
			want: ReasonMemberBusy,
			msg:  "the member has exited: it refuses connections while the agent shuts down (last read: connection refused); its defrag record stays, so the next lock holder waits for it to answer again",
		},
		{
			name: "the member did not come back", d: defragDone{requestErr: timeout, answerErr: context.DeadlineExceeded}, want: ReasonMemberBusy,
			msg: "member did not answer within --defrag-timeout 10m0s after the Defragment request: context deadline exceeded (the Defragment request: rpc error: code = DeadlineExceeded desc = context deadline exceeded)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := defragOutcome(tc.d, ep, tc.shrank, 10*time.Minute)
			if got != tc.want {
				t.Errorf("reason = %q, want %q (err %v)", got, tc.want, err)
			}
			switch {
			case tc.msg == "" && err != nil:
				t.Errorf("err = %v, want none", err)
			case tc.msg != "" && (err == nil || err.Error() != tc.msg):
				t.Errorf("err:\n got %v\nwant %s", err, tc.msg)
			}
		})
	}
}

func TestNoSpaceTarget(t *testing.T) {
	const quota = 100
	size := func(id uint64, db int64, leader bool) memberSize {
		return memberSize{m: &pb.Member{ID: id, Name: fmt.Sprintf("m%d", id)}, st: memberStatus{DBSize: db, Quota: quota}, leader: leader}
	}
	sizes := []memberSize{size(3, 95, false), size(1, 99, true), size(2, 92, false), size(4, 50, false)}
	tests := []struct {
		name  string
		done  map[uint64]bool
		want  uint64 // 0: none
		above int
	}{
		{"the follower with the lowest ID first", nil, 2, 3},
		{"then the next follower", map[uint64]bool{2: true}, 3, 3},
		{"the leader last", map[uint64]bool{2: true, 3: true}, 1, 3},
		{"none left", map[uint64]bool{1: true, 2: true, 3: true}, 0, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, above := noSpaceTarget(sizes, tc.done, 0.9)
			var id uint64
			if got != nil {
				id = got.ID
			}
			if id != tc.want || len(above) != tc.above {
				t.Errorf("noSpaceTarget = %d with %d above (%v), want %d with %d", id, len(above), above, tc.want, tc.above)
			}
		})
	}
}

func TestNoSpaceActor(t *testing.T) {
	tests := []struct {
		heads bool
		head  string
		leads bool
		want  string
	}{
		{true, "/p/nospace/1", false, ""},
		{false, "/p/nospace/1", true, "the agent first in the NOSPACE queue (/p/nospace/1) recovers"},
		{false, "", false, "no agent is queued for NOSPACE; the leader's agent recovers"},
		{false, "", true, ""},
	}
	for _, tc := range tests {
		if got := noSpaceActor(tc.heads, tc.head, tc.leads); got != tc.want {
			t.Errorf("noSpaceActor(%v, %q, %v) = %q, want %q", tc.heads, tc.head, tc.leads, got, tc.want)
		}
	}
}

// TestIdleRepeats: a daemon writes an idle announcement again only when it
// says something new, or the leader's agent asked since the last one.
func TestIdleRepeats(t *testing.T) {
	var p presence
	sess := &lock.Session{}
	p.start(sess)
	cur := idle{reason: ReasonCooldown}
	if p.repeats(sess, cur) {
		t.Error("the first idle announcement counts as a repeat")
	}
	p.announcedIdle(sess, idle{reason: ReasonCooldown, revision: 10})
	if !p.repeats(sess, cur) {
		t.Error("the same announcement again is written")
	}
	if p.repeats(sess, idle{reason: ReasonRuleFalse}) {
		t.Error("a new reason is not written")
	}
	if p.repeats(sess, idle{reason: ReasonCooldown, leader: true}) {
		t.Error("a new leadership is not written")
	}
	p.asked(11)
	if p.repeats(sess, cur) {
		t.Error("the leader's agent asked since, yet the announcement is not written")
	}
	if p.repeats(&lock.Session{}, cur) {
		t.Error("another session's announcement counts as a repeat")
	}
}

func TestErrorClasses(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("announce /p/agents/1/2: %w", err) }
	tests := []struct {
		name                      string
		err                       error
		noSpace, denied, deadline bool
	}{
		{"nil", nil, false, false, false},
		{"NOSPACE from etcd's client", wrap(rpctypes.ErrNoSpace), true, false, false},
		{"NOSPACE as a gRPC status", wrap(rpctypes.ErrGRPCNoSpace), true, false, false},
		{"another resource exhausted", status.Error(codes.ResourceExhausted, "too many requests"), false, false, false},
		{"permission denied from etcd's client", wrap(rpctypes.ErrPermissionDenied), false, true, false},
		{"permission denied as a gRPC status", status.Error(codes.PermissionDenied, "etcdserver: permission denied"), false, true, false},
		{"the agent's own finding", fmt.Errorf("%w: no root role", errPermission), false, true, false},
		{"a message that only mentions it", errors.New("the permission denied page"), false, false, false},
		{"the client's deadline", wrap(context.DeadlineExceeded), false, false, true},
		{"the server's deadline", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), false, false, true},
		{"etcd 3.4's deadline", status.Error(codes.Unknown, "context deadline exceeded"), false, false, true},
		{"another unknown", status.Error(codes.Unknown, "boom"), false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := isNoSpace(tc.err); got != tc.noSpace {
				t.Errorf("isNoSpace(%v) = %v, want %v", tc.err, got, tc.noSpace)
			}
			if got := isPermissionDenied(tc.err); got != tc.denied {
				t.Errorf("isPermissionDenied(%v) = %v, want %v", tc.err, got, tc.denied)
			}
			if got := isDeadline(tc.err); got != tc.deadline {
				t.Errorf("isDeadline(%v) = %v, want %v", tc.err, got, tc.deadline)
			}
		})
	}
}

func TestLagBehind(t *testing.T) {
	for _, tc := range []struct{ leader, applied, want uint64 }{{100, 90, 10}, {100, 100, 0}, {90, 100, 0}} {
		if got := lagBehind(tc.leader, tc.applied); got != tc.want {
			t.Errorf("lagBehind(%d, %d) = %d, want %d", tc.leader, tc.applied, got, tc.want)
		}
	}
}
