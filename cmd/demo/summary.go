package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// errFail is returned when a check of the round failed.
var errFail = errors.New("verification failed")

// summarize prints one row per member and checks the round from etcd's own
// account: each member defragmented once, never two at a time, the leader
// last, and the data unchanged. It returns errFail if a check failed.
func (d *demo) summarize(ctx context.Context, res roundResult) error {
	after, err := d.sizes(ctx)
	if err != nil {
		return err
	}
	d.printf("\nSummary (defrag times from etcd's own log lines, relative to the agents' start; sizes from Status):\n")
	tw := d.table()
	fmt.Fprintf(tw, "  MEMBER\tROLE\tDEFRAG START\tDURATION\tDBSIZE BEFORE → AFTER\tRECLAIMED\n")
	first := map[uint64]etcdtest.Defrag{}
	for _, x := range res.ds {
		if _, ok := first[x.MemberID]; !ok {
			first[x.MemberID] = x
		}
	}
	members := d.c.Members()
	slices.SortStableFunc(members, func(a, b *etcdtest.Member) int {
		da, oka := first[a.ID]
		db, okb := first[b.ID]
		switch {
		case oka && okb:
			return da.Start.Compare(db.Start)
		case oka:
			return -1
		case okb:
			return 1
		}
		return 0
	})
	for _, m := range members {
		b, a := d.before[m.ID], after[m.ID]
		r := role(m.ID == res.leader.ID)
		x, ok := first[m.ID]
		switch {
		case !ok:
			fmt.Fprintf(tw, "  %s\t%s\t-\t-\t%s → %s\tnot defragmented\n", m.Name, r, mib(b.DBSize), mib(a.DBSize))
		case x.Running():
			fmt.Fprintf(tw, "  %s\t%s\t%+d ms\trunning\t%s → ?\t?\n", m.Name, r, x.Start.Sub(res.t0).Round(time.Millisecond).Milliseconds(), mib(b.DBSize))
		default:
			fmt.Fprintf(tw, "  %s\t%s\t%+d ms\t%s\t%s → %s\t%s\n", m.Name, r, x.Start.Sub(res.t0).Round(time.Millisecond).Milliseconds(),
				millis(x.Duration()), mib(b.DBSize), mib(a.DBSize), mib(b.DBSize-a.DBSize))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	now, err := d.c.Leader(ctx)
	if err != nil {
		return err
	}
	var problems []string
	d.printf("\nChecks:\n")
	check := func(ok bool, format string, args ...any) {
		mark := "ok  "
		if !ok {
			mark = "FAIL"
			problems = append(problems, fmt.Sprintf(format, args...))
		}
		d.printf("  %s  %s\n", mark, fmt.Sprintf(format, args...))
	}
	count := map[uint64]int{}
	var failed []string
	for _, x := range res.ds {
		count[x.MemberID]++
		if x.Err != "" || x.Running() {
			failed = append(failed, x.String())
		}
	}
	var notOnce []string
	for _, m := range d.c.Members() {
		if count[m.ID] != 1 {
			notOnce = append(notOnce, fmt.Sprintf("%s %d times", m.Name, count[m.ID]))
		}
	}
	check(len(notOnce) == 0, "each member defragmented exactly once (etcd logged %d defrags)%s", len(res.ds), listed(notOnce))
	check(len(failed) == 0, "every defrag finished without error%s", listed(failed))
	ov := etcdtest.Overlaps(res.ds)
	var pairs []string
	for _, p := range ov {
		pairs = append(pairs, fmt.Sprintf("%s and %s", p[0], p[1]))
	}
	check(len(ov) == 0, "one at a time: no two defrag intervals overlap%s", listed(pairs))
	if now.ID != res.leader.ID {
		d.printf("  --    leader last: not judged, leadership moved from %s to %s during the round\n", res.leader.Name, now.Name)
	} else {
		ok, text := leaderLast(res.ds, res.leader)
		check(ok, "leader last: %s", text)
	}
	ok, text, err := d.sameData(ctx)
	if err != nil {
		return err
	}
	check(ok, "nothing lost: %s", text)

	if len(problems) > 0 {
		d.printf("FAIL: %s\n\n", strings.Join(problems, "; "))
		return errFail
	}
	d.printf("PASS: one member at a time, the leader last, judged from etcd's own log lines; no data changed.\n\n")
	return nil
}

// listed formats a list of problems after a check's text.
func listed(items []string) string {
	if len(items) == 0 {
		return ""
	}
	return ": " + strings.Join(items, ", ")
}

// leaderLast checks that the leader's defrag began after every other one had
// ended.
func leaderLast(ds []etcdtest.Defrag, leader *etcdtest.Member) (bool, string) {
	var ld *etcdtest.Defrag
	for i := range ds {
		if ds[i].MemberID == leader.ID {
			ld = &ds[i]
			break
		}
	}
	if ld == nil {
		return false, fmt.Sprintf("the leader %s was not defragmented", leader.Name)
	}
	var lastEnd time.Time
	last := ""
	for _, x := range ds {
		if x.MemberID == leader.ID {
			continue
		}
		if x.Running() || !x.End.Before(ld.Start) {
			return false, fmt.Sprintf("the leader %s began at %s, before %s had finished", leader.Name, ld.Start.Format("15:04:05.000"), x)
		}
		if x.End.After(lastEnd) {
			lastEnd, last = x.End, x.Member
		}
	}
	if last == "" {
		return true, fmt.Sprintf("the leader %s was the only member defragmented", leader.Name)
	}
	return true, fmt.Sprintf("the leader %s began %s after the last follower, %s, had finished", leader.Name, millis(ld.Start.Sub(lastEnd)), last)
}

// sameData checks that the keys written before the round are all still there
// and that every member has the same HashKV at a revision all have applied.
func (d *demo) sameData(ctx context.Context) (bool, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := d.cli.Get(cctx, etcddata.DefaultFillPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, "", fmt.Errorf("count keys: %w", err)
	}
	now, err := d.sizes(cctx)
	if err != nil {
		return false, "", err
	}
	rev := int64(0)
	for _, s := range now {
		if rev == 0 || s.Revision < rev {
			rev = s.Revision
		}
	}
	hashes := map[uint32][]string{}
	for _, m := range d.c.Members() {
		h, err := d.cli.HashKV(cctx, m.ClientURL, rev)
		if err != nil {
			return false, "", fmt.Errorf("hashkv of %s: %w", m.Name, err)
		}
		hashes[h.Hash] = append(hashes[h.Hash], m.Name)
	}
	ok := resp.Count == int64(d.filled.Keys) && len(hashes) == 1
	text := fmt.Sprintf("%d keys before the round, %d after; ", d.filled.Keys, resp.Count)
	if len(hashes) == 1 {
		for h := range hashes {
			text += fmt.Sprintf("every member's HashKV at revision %d is %08x", rev, h)
		}
	} else {
		text += fmt.Sprintf("HashKV at revision %d differs: %v", rev, hashes)
	}
	return ok, text, nil
}
