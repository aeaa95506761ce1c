package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

// The check after a defrag: the member's HashKV against a peer's at a
// revision both have applied. The peer is hashed while the member
// defragments; the member itself once its turn is over and the next turn
// has started (yieldToNextTurn).
//
// The revision is the member's, read under the lock after the agent's own
// announcements, so it is newer than every compaction etcd had then. It
// must not be a compaction's revision: etcd (3.5.5 on) answers HashKV at
// one from the hash it stored while compacting, before the defrag, and the
// check would compare nothing of the defragmented file
// (TestVerifyReadsTheDefraggedFile).

// hashResult is a HashKV answer.
type hashResult struct {
	resp     *clientv3.HashKVResponse
	endpoint string
	id       uint64
	err      error
}

// hashPeer computes, in the background, the HashKV of a peer — the leader,
// or a follower when this member leads — at revision rev, which this member
// has applied: it runs while this member defragments. The channel yields
// one result; none when there is no peer (a single voting member).
func (c *cycle) hashPeer(ctx context.Context, rev int64) <-chan hashResult {
	var peer *pb.Member
	for _, m := range voters(c.members) {
		if m.ID == c.st.ID {
			continue
		}
		if m.ID == c.st.Leader || peer == nil {
			peer = m
		}
	}
	if peer == nil {
		return nil
	}
	out := make(chan hashResult, 1)
	go func() {
		r := hashResult{id: peer.ID}
		var errs []error
		for _, u := range peer.ClientURLs {
			r.resp, r.err = c.a.local.HashKV(ctx, u, rev)
			if r.err == nil {
				r.endpoint = u
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

// verify compares this member's HashKV with the peer's, at the revision the
// peer was hashed at while this member defragmented. If that cannot be
// compared — the peer's hash failed, or a compaction came between the two —
// it hashes both again at a revision both have applied now.
func (c *cycle) verify(ctx context.Context, peerHash <-chan hashResult) error {
	ph := <-peerHash
	c.yieldToNextTurn(ctx)
	if ph.err == nil {
		self, err := c.a.local.HashKV(ctx, c.st.Endpoint, c.st.Revision)
		if err == nil && self.CompactRevision == ph.resp.CompactRevision {
			return c.compare(c.st.Revision, self, c.st.ID, ph.resp, ph.id)
		}
		c.log.Debug("hashes at the defrag's revision not comparable; hashing again", "revision", c.st.Revision, "err", err)
	} else {
		c.log.Debug("peer hash during the defrag failed; hashing again", "err", ph.err)
	}
	var peerURLs []string
	for _, m := range voters(c.members) {
		if m.ID == ph.id {
			peerURLs = m.ClientURLs
		}
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = c.compareHash(ctx, peerURLs)
		if err == nil || !errors.Is(err, errCompactionRaced) {
			return err
		}
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

// compareHash computes HashKV on this member and a peer at one revision.
func (c *cycle) compareHash(ctx context.Context, peerURLs []string) error {
	a := c.a
	self, err := a.localStatus(ctx)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	peer, err := a.statusOfAny(ctx, peerURLs)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	rev := min(self.Revision, peer.Revision)
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
		return fmt.Errorf("verify: hashkv of %s at %d: %w", self.Endpoint, rev, err)
	}
	h2, err := ph.resp, ph.err
	if err != nil {
		return fmt.Errorf("verify: hashkv of %s at %d: %w", peer.Endpoint, rev, err)
	}
	if h1.CompactRevision != h2.CompactRevision {
		return errCompactionRaced
	}
	return c.compare(rev, h1, self.ID, h2, peer.ID)
}
