package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

// The check after a defrag: the member's HashKV against a peer's at a
// revision both have applied. The first member of a round takes its own
// revision, read under the lock after the agent's own announcements (so
// newer than every compaction etcd had then), and hashes a peer there while
// it defragments; the members after it in the round take the same revision
// from its last/ record and compare with the hash it recorded after its own
// defrag (planCheck). Each member hashes itself once the next turn has
// started (yieldToNextTurn). A round of n members thus costs n+1 hashes,
// not 2n, and the leader — the peer of every follower before — is hashed
// twice, not n times: a hash holds the member's backend for its whole scan.
//
// The member must not be hashed at a compaction's revision: etcd (3.5.5 on)
// answers HashKV there from the hash it stored while compacting, before the
// defrag, and the check would compare nothing of the defragmented file
// (TestVerifyReadsTheDefraggedFile). verify therefore reads the revision
// below after the hash: if that was compacted, so may be the revision, and
// the check starts again at a fresh one.

// checkPlan is where the check after this defrag hashes the member and what
// it compares with: the hash that member ref (the one that defragmented
// just before in this round) recorded at rev, or, when ref is 0, a peer
// hashed at rev while this member defragments.
type checkPlan struct {
	rev int64
	ref uint64
}

// referenceMaxAge bounds how long ago a peer's defrag may have ended for
// this member to take its revision and hash: a round's turns follow each
// other within moments, so an older record belongs to an earlier round, and
// the writes since its revision would go unchecked.
const referenceMaxAge = 10 * time.Minute

// planCheck plans the check of member st's defrag from the other voting
// members' last-defrag records: the newest check of the round that is under
// way or passed (see checkPlan).
func planCheck(others map[uint64]coord.Last, voting []*pb.Member, st memberStatus, now time.Time) checkPlan {
	plan := checkPlan{rev: st.Revision}
	var newest time.Time
	for _, m := range voting {
		l, ok := others[m.ID]
		switch {
		case m.ID == st.ID || !ok || l.Check == nil:
		case l.Verify != coord.VerifyPending && l.Verify != coord.VerifyOK:
		case l.Check.Revision <= 0 || l.Check.Revision > st.Revision:
		case now.Sub(l.End) > referenceMaxAge || !l.End.After(newest):
		default:
			plan, newest = checkPlan{rev: l.Check.Revision, ref: m.ID}, l.End
		}
	}
	return plan
}

// hashResult is a HashKV answer, or the hash a member recorded.
type hashResult struct {
	resp *clientv3.HashKVResponse
	id   uint64
	err  error
}

// checkPeer is the member a first check hashes, and falls back on: the
// leader, or a follower when this member leads; nil when there is none (a
// single voting member).
func (c *cycle) checkPeer() *pb.Member {
	var peer *pb.Member
	for _, m := range voters(c.members) {
		if m.ID == c.st.ID {
			continue
		}
		if m.ID == c.st.Leader || peer == nil {
			peer = m
		}
	}
	return peer
}

// hashPeer computes, in the background, the HashKV of peer at revision
// rev, which this member has applied: it runs while this member
// defragments. The channel yields one result.
func (c *cycle) hashPeer(ctx context.Context, peer *pb.Member, rev int64) <-chan hashResult {
	out := make(chan hashResult, 1)
	go func() {
		r := hashResult{id: peer.ID}
		var errs []error
		for _, u := range peer.ClientURLs {
			r.resp, r.err = c.a.local.HashKV(ctx, u, rev)
			if r.err == nil {
				break
			}
			errs = append(errs, r.err)
		}
		if r.err != nil {
			r.err = fmt.Errorf("hashkv of member %x at %d: %w", peer.ID, rev, errors.Join(errs...))
		}
		out <- r
	}()
	return out
}

// referenceWaitFloor is the least the check waits for the hash of the member
// that went before (see recordedHash).
const referenceWaitFloor = 10 * time.Second

// recordedHash waits until the check of member c.check.ref ends, and yields
// the hash it recorded at c.check.rev. That member hashes itself once this
// one's defrag has started, and a hash reads what a defrag copies and
// writes, so the wait is bounded by this member's defrag (took), and at
// least referenceWaitFloor: an agent that died before recording its hash
// costs the check no more.
func (c *cycle) recordedHash(ctx context.Context, took time.Duration) hashResult {
	ctx, cancel := context.WithTimeout(ctx, max(referenceWaitFloor, took))
	defer cancel()
	r := hashResult{id: c.check.ref}
	for {
		rec, found, err := c.a.board.Last(ctx, c.check.ref)
		if err != nil {
			r.err = err
			return r
		}
		l := rec.Value
		switch {
		case !found || l.Check == nil || l.Check.Revision != c.check.rev:
			r.err = fmt.Errorf("member %x's last-defrag record no longer holds its check at revision %d", c.check.ref, c.check.rev)
			return r
		case l.Verify == coord.VerifyOK:
			r.resp = &clientv3.HashKVResponse{Hash: l.Check.Hash, CompactRevision: l.Check.CompactRevision}
			return r
		case l.Verify != coord.VerifyPending:
			r.err = fmt.Errorf("member %x's own check ended %q", c.check.ref, l.Verify)
			return r
		}
		if err := c.a.board.WaitLastChange(ctx, c.check.ref, rec.Revision); err != nil {
			r.err = fmt.Errorf("waiting for member %x's check: %w", c.check.ref, err)
			return r
		}
	}
}

// verify compares this member's HashKV with the reference at c.check.rev:
// the peer hashed while this member defragmented (during), or, without one,
// the hash the member before recorded. If that cannot be compared — the
// reference is missing, or a compaction came between the two hashes — it
// hashes this member and that peer again, at the same revision unless a
// compaction came past it. It returns where the member was hashed, for its
// record.
func (c *cycle) verify(ctx context.Context, peer *pb.Member, during <-chan hashResult) (coord.Check, error) {
	var ref hashResult
	if during != nil {
		ref = <-during
	} else {
		ref = c.recordedHash(ctx, time.Duration(c.rep.DefragSeconds*float64(time.Second)))
	}
	c.yieldToNextTurn(ctx)
	rev := c.check.rev
	if ref.err == nil {
		self, err := c.a.local.HashKV(ctx, c.st.Endpoint, rev)
		switch {
		case err != nil:
		case self.CompactRevision != ref.resp.CompactRevision:
			err = errCompactionRaced
		default:
			err = c.notCompactedBelow(ctx, rev)
		}
		if err == nil {
			chk := coord.Check{Revision: rev, CompactRevision: self.CompactRevision, Hash: self.Hash}
			return chk, c.compare(rev, self, c.st.ID, ref.resp, ref.id)
		}
		c.log.Debug("hashes at the check's revision not comparable; hashing again", "revision", rev, "err", err)
		if compacted(err) {
			rev = 0
		}
	} else {
		c.log.Debug("no reference hash; hashing again", "revision", rev, "err", ref.err)
	}
	// Again at the same revision, so that the members after this one still
	// share it, unless a compaction came past it: then at a fresh one.
	var peerURLs []string
	if p := findMember(voters(c.members), ref.id); p != nil {
		peerURLs = p.ClientURLs
	} else if peer != nil {
		peerURLs = peer.ClientURLs
	}
	var chk coord.Check
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		chk, err = c.compareHash(ctx, peerURLs, rev)
		if err == nil || !compacted(err) {
			return chk, err
		}
		rev = 0
	}
	return chk, err
}

// compacted tells whether err says that a compaction came past the
// revision of a hash.
func compacted(err error) bool {
	return errors.Is(err, errCompactionRaced) || errors.Is(err, rpctypes.ErrCompacted)
}

// notCompactedBelow reads this member at rev-1: if that revision has been
// compacted, a compaction may have landed on rev itself, and a hash there
// may be the one etcd stored while compacting.
func (c *cycle) notCompactedBelow(ctx context.Context, rev int64) error {
	if rev <= 1 {
		return nil
	}
	_, err := c.a.local.Get(ctx, c.a.board.Keys().Health(), clientv3.WithRev(rev-1), clientv3.WithSerializable(), clientv3.WithCountOnly())
	if errors.Is(err, rpctypes.ErrCompacted) {
		return errCompactionRaced
	}
	return err
}

// verifyYieldMax bounds how long the member's own hash waits for the next
// turn to start: the next agent's checks take tens of milliseconds (a few
// hundred at 7 members), and nothing else may wait on this agent longer — a
// cluster that enters NOSPACE meanwhile freezes every announcement, and this
// agent's next cycle may be the one to recover it (make bench P5 saw a
// recovery 5 s late with a bound of 5 s).
const verifyYieldMax = time.Second

// yieldToNextTurn waits, up to verifyYieldMax, until the member's own hash
// stalls no other agent's turn. HashKV holds the member's backend read
// transaction for the whole scan of its key space, and the member commits
// nothing to its backend meanwhile (etcd's batch transaction waits for
// that lock): every request that reads or writes through the member waits
// for the hash — at 1 GiB in use, a few hundred milliseconds. The next
// agent's checks under the lock read through every member (its health gate
// reads this one), so the hash waits until the next member's defrag has
// started, when nothing is checked any more, or until no other agent is in
// a turn at all.
func (c *cycle) yieldToNextTurn(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, verifyYieldMax)
	defer cancel()
	for {
		anns, rev, err := c.a.board.Announcements(ctx)
		if err != nil || nextTurnStarted(anns, c.st.ID) {
			return
		}
		if err := c.a.board.WaitChange(ctx, rev); err != nil && ctx.Err() == nil {
			c.log.Debug("watch while waiting for the next turn failed", "err", err)
			return
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// nextTurnStarted reports, from the agents' announcements, whether the hash
// of member self can run without stalling another agent's turn: another
// member defragments (its agent's checks are over), or no agent of another
// member waits for a turn or holds the lock.
func nextTurnStarted(anns []coord.Announcement, self uint64) bool {
	waiting := false
	for _, a := range anns {
		if a.Member == self {
			continue
		}
		switch a.State {
		case coord.StateDefragmenting:
			return true
		case coord.StatePending, coord.StateLocked:
			waiting = true
		}
	}
	return !waiting
}

// compare checks two hashes taken at rev with the same compact revision.
func (c *cycle) compare(rev int64, h1 *clientv3.HashKVResponse, id1 uint64, h2 *clientv3.HashKVResponse, id2 uint64) error {
	if h1.Hash != h2.Hash {
		return fmt.Errorf("verify: %w at revision %d: member %x has %d, member %x has %d; check the cluster for corruption",
			errHashMismatch, rev, id1, h1.Hash, id2, h2.Hash)
	}
	c.log.Debug("hashkv matches", "revision", rev, "peer", fmt.Sprintf("%x", id2), "hash", h1.Hash)
	return nil
}

var (
	errCompactionRaced = errors.New("compaction changed between the two hashes")
	errHashMismatch    = errors.New("HashKV differs")
)

// compareHash computes HashKV on this member and a peer at revision rev, or,
// when rev is 0, at one both have applied now.
func (c *cycle) compareHash(ctx context.Context, peerURLs []string, rev int64) (coord.Check, error) {
	a := c.a
	self, err := a.localStatus(ctx)
	if err != nil {
		return coord.Check{}, fmt.Errorf("verify: %w", err)
	}
	peer, err := a.statusOfAny(ctx, peerURLs)
	if err != nil {
		return coord.Check{}, fmt.Errorf("verify: %w", err)
	}
	if rev == 0 {
		rev = min(self.Revision, peer.Revision)
	}
	// Both members hash their whole key space: in parallel, the check
	// takes one hash's time.
	type hashed struct {
		resp *clientv3.HashKVResponse
		err  error
	}
	peerHash := make(chan hashed, 1)
	go func() {
		r, err := a.local.HashKV(ctx, peer.Endpoint, rev)
		peerHash <- hashed{r, err}
	}()
	h1, err := a.local.HashKV(ctx, self.Endpoint, rev)
	ph := <-peerHash
	if err != nil {
		return coord.Check{}, fmt.Errorf("verify: hashkv of %s at %d: %w", self.Endpoint, rev, err)
	}
	h2, err := ph.resp, ph.err
	if err != nil {
		return coord.Check{}, fmt.Errorf("verify: hashkv of %s at %d: %w", peer.Endpoint, rev, err)
	}
	if h1.CompactRevision != h2.CompactRevision {
		return coord.Check{}, errCompactionRaced
	}
	if err := c.notCompactedBelow(ctx, rev); err != nil {
		return coord.Check{}, err
	}
	chk := coord.Check{Revision: rev, CompactRevision: h1.CompactRevision, Hash: h1.Hash}
	return chk, c.compare(rev, h1, self.ID, h2, peer.ID)
}
