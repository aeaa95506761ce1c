package etcdtest_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := etcdtest.FindLeaks(etcdtest.PeerConnLinger); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestStartLeaderPutGet(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{})
	ctx := t.Context()
	if got := len(c.Members()); got != 3 {
		t.Fatalf("len(Members()) = %d, want 3", got)
	}
	eps := c.Endpoints()
	if len(eps) != 3 {
		t.Fatalf("Endpoints() = %v, want 3", eps)
	}
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint64]bool{}
	for _, m := range c.Members() {
		ids[m.ID] = true
		if m.ID == 0 || m.Etcd == nil || m.IsLearner() {
			t.Errorf("member %s: ID %x, Etcd %v, learner %v", m.Name, m.ID, m.Etcd, m.IsLearner())
		}
	}
	if !ids[lead.ID] || len(ids) != 3 {
		t.Errorf("leader %x not among 3 distinct members %v", lead.ID, ids)
	}
	for i, ep := range eps {
		cli := c.ClientT(t, ep)
		if _, err := cli.Put(ctx, fmt.Sprintf("k%d", i), ep); err != nil {
			t.Fatalf("Put via %s: %v", ep, err)
		}
	}
	// Leader names the member every member's Status names. On a busy
	// machine leadership may move between two reads: read both again
	// until they agree, within a deadline.
	deadline := time.Now().Add(30 * time.Second)
	for {
		disagree := leaderDisagreement(t, c, eps)
		if disagree == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Leader and the members' Status disagree for 30s: %s", disagree)
		}
		time.Sleep(100 * time.Millisecond) // a poll interval, not a synchronisation
	}
	for _, ep := range eps {
		cli := c.ClientT(t, ep)
		for i, want := range eps {
			resp, err := cli.Get(ctx, fmt.Sprintf("k%d", i))
			if err != nil {
				t.Fatalf("Get via %s: %v", ep, err)
			}
			if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
				t.Errorf("Get(k%d) via %s = %v, want %q", i, ep, resp.Kvs, want)
			}
		}
	}
}

func TestDefragsOnePerCall(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{})
	ctx := t.Context()
	cli := c.ClientT(t)
	if _, err := etcddata.Fill(ctx, cli, etcddata.FillOptions{Keys: 2000, ValueSize: 512, Garbage: 0.5}); err != nil {
		t.Fatal(err)
	}
	if ds := c.Defrags(); len(ds) != 0 {
		t.Fatalf("Defrags() before any defrag = %v, want none", ds)
	}
	for _, m := range c.Members() {
		if _, err := cli.Defragment(ctx, m.ClientURL); err != nil {
			t.Fatalf("Defragment(%s): %v", m.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ds, err := c.WaitDefrags(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 3 {
		t.Fatalf("Defrags() = %v, want 3", ds)
	}
	for i, m := range c.Members() {
		d := ds[i] // sequential calls: start order is member order
		if d.Member != m.Name || d.MemberID != m.ID {
			t.Errorf("defrag %d = %v, want member %s (%x)", i, d, m.Name, m.ID)
		}
		if !d.Start.Before(d.End) || d.Err != "" {
			t.Errorf("defrag %d = %v, want Start < End and no error", i, d)
		}
		t.Logf("defrag %v took %v", d, d.Duration())
	}
	if o := etcdtest.Overlaps(ds); len(o) != 0 {
		t.Errorf("Overlaps(sequential defrags) = %v, want none", o)
	}
}

func TestConcurrentDefragsOverlap(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	ctx := t.Context()
	cli := c.ClientT(t)
	// ~20 MiB in use: each defrag lasts about 100 ms (1 s with -race), so
	// two defrags started together overlap.
	if _, err := etcddata.Fill(ctx, cli, etcddata.FillOptions{Keys: 20, ValueSize: 1 << 20, Garbage: 0.1}); err != nil {
		t.Fatal(err)
	}
	ms := c.Members()[:2]
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() {
			if _, err := cli.Defragment(ctx, m.ClientURL); err != nil {
				t.Errorf("Defragment(%s): %v", m.Name, err)
			}
		})
	}
	wg.Wait()
	ds := c.Defrags()
	if len(ds) != 2 {
		t.Fatalf("Defrags() = %v, want 2", ds)
	}
	if ds[0].Member == ds[1].Member {
		t.Fatalf("Defrags() = %v, want two members", ds)
	}
	t.Logf("defrags: %v, %v", ds[0], ds[1])
	if o := etcdtest.Overlaps(ds); len(o) != 1 {
		t.Errorf("Overlaps(concurrent defrags %v) = %v, want 1 pair", ds, o)
	}
}

func TestOverlaps(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	d := func(m string, start, end int) etcdtest.Defrag {
		x := etcdtest.Defrag{Member: m, Start: at(start)}
		if end >= 0 {
			x.End = at(end)
		}
		return x
	}
	tests := []struct {
		name string
		ds   []etcdtest.Defrag
		want int
	}{
		{"none", nil, 0},
		{"one", []etcdtest.Defrag{d("a", 0, 1)}, 0},
		{"sequential", []etcdtest.Defrag{d("a", 0, 1), d("b", 2, 3), d("c", 4, 5)}, 0},
		{"touching", []etcdtest.Defrag{d("a", 0, 1), d("b", 1, 2)}, 0},
		{"overlapping", []etcdtest.Defrag{d("a", 0, 2), d("b", 1, 3)}, 1},
		{"nested", []etcdtest.Defrag{d("a", 0, 10), d("b", 1, 2), d("c", 3, 4)}, 2},
		{"unsorted", []etcdtest.Defrag{d("b", 1, 3), d("a", 0, 2)}, 1},
		{"running overlaps later", []etcdtest.Defrag{d("a", 0, -1), d("b", 5, 6)}, 1},
		{"running after finished", []etcdtest.Defrag{d("a", 0, 1), d("b", 2, -1)}, 0},
		{"two running", []etcdtest.Defrag{d("a", 0, -1), d("b", 1, -1)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := etcdtest.Overlaps(tt.ds)
			if len(got) != tt.want {
				t.Errorf("Overlaps(%v) = %v, want %d pairs", tt.ds, got, tt.want)
			}
			for _, p := range got {
				if p[1].Start.Before(p[0].Start) {
					t.Errorf("pair %v not ordered by Start", p)
				}
			}
		})
	}
}

func TestStopRestart(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{})
	ctx := t.Context()
	m := c.Members()[1]
	m.Stop()
	m.Stop() // idempotent
	if m.Running() || m.Etcd != nil {
		t.Fatalf("member %s running after Stop", m.Name)
	}
	if eps := c.Endpoints(); len(eps) != 2 {
		t.Fatalf("Endpoints() after Stop = %v, want 2", eps)
	}
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	cli := c.ClientT(t)
	if _, err := cli.Put(ctx, "while-stopped", "v"); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if eps := c.Endpoints(); len(eps) != 3 {
		t.Fatalf("Endpoints() after Restart = %v, want 3", eps)
	}
	mcli := c.ClientT(t, m.ClientURL)
	resp, err := mcli.Get(ctx, "while-stopped")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Errorf("Get(while-stopped) via restarted %s = %v, want the key", m.Name, resp.Kvs)
	}
	st, err := mcli.Status(ctx, m.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	if st.Header.MemberId != m.ID {
		t.Errorf("restarted member ID = %x, want %x", st.Header.MemberId, m.ID)
	}
	if err := m.Restart(ctx); err == nil {
		t.Error("Restart of a running member succeeded, want error")
	}
}

func TestStopLeader(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{})
	ctx := t.Context()
	old, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old.Stop()
	lead, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lead == old || !lead.Running() {
		t.Errorf("Leader() after stopping leader %s = %s, want another running member", old.Name, lead.Name)
	}
	if _, err := c.ClientT(t).Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put with 2 of 3 members: %v", err)
	}
}

func TestAddLearner(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{})
	ctx := t.Context()
	l, err := c.AddLearner(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !l.IsLearner() || l.Name != "m3" {
		t.Errorf("AddLearner() = %s learner %v, want m3 learner", l.Name, l.IsLearner())
	}
	if got := len(c.Members()); got != 4 {
		t.Errorf("len(Members()) = %d, want 4", got)
	}
	if eps := c.Endpoints(); len(eps) != 3 {
		t.Errorf("Endpoints() = %v, want the 3 voters", eps)
	}
	cli := c.ClientT(t, l.ClientURL)
	st, err := cli.Status(ctx, l.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	if !st.IsLearner || st.Header.MemberId != l.ID {
		t.Errorf("Status(learner) = learner %v id %x, want learner %x", st.IsLearner, st.Header.MemberId, l.ID)
	}
	_, err = cli.Defragment(ctx, l.ClientURL)
	errLearner := rpctypes.Error(rpctypes.ErrGRPCNotSupportedForLearner)
	if !errors.Is(err, errLearner) {
		t.Errorf("Defragment(learner) error = %v, want %v", err, errLearner)
	}
	t.Logf("Defragment(learner): %q, code %v", err, rpcCode(err))
	if ds := c.Defrags(); len(ds) != 0 {
		t.Errorf("Defrags() = %v, want none", ds)
	}
	// The learner survives a restart as a learner.
	l.Stop()
	if err := l.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.IsLearner() {
		t.Error("learner is a voter after Restart")
	}
}

func rpcCode(err error) string {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code().String()
	}
	return "none"
}

func TestTLS(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{TLS: true})
	ctx := t.Context()
	ca, cert, key := c.TLSFiles()
	for _, f := range []string{ca, cert, key} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("TLS file: %v", err)
		}
	}
	if _, acert, akey := c.TLSFilesFor(etcdtest.AliceUser); acert == "" || akey == "" || acert == cert {
		t.Errorf("TLSFilesFor(alice) = %q, %q", acert, akey)
	}
	for _, ep := range c.Endpoints() {
		if ep[:8] != "https://" {
			t.Errorf("endpoint %s is not https", ep)
		}
	}
	cli := c.ClientT(t)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Defragment(ctx, c.Endpoints()[0]); err != nil {
		t.Fatal(err)
	}

	// Without a client certificate, the handshake fails.
	cfg := c.ClientConfig()
	cfg.TLS = &tls.Config{RootCAs: cfg.TLS.RootCAs}
	nocert, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nocert.Close() }()
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = nocert.Get(tctx, "k")
	if err == nil {
		t.Error("Get without client certificate succeeded, want error")
	}
	t.Logf("Get without client certificate: %v", err)
}

func TestAuth(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{Auth: true})
	ctx := t.Context()
	root := c.ClientT(t)
	ep := c.Endpoints()[0]
	if _, err := root.Defragment(ctx, ep); err != nil {
		t.Fatalf("root Defragment: %v", err)
	}
	alice, err := c.ClientAs(ctx, etcdtest.AliceUser)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = alice.Close() }()
	if _, err := alice.Put(ctx, "/some/key", "v"); err != nil {
		t.Fatalf("alice Put: %v", err)
	}
	if _, err := alice.Status(ctx, ep); err != nil {
		t.Fatalf("alice Status: %v", err)
	}
	_, err = alice.Defragment(ctx, ep)
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("alice Defragment error = %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	t.Logf("alice Defragment: %q, code %v", err, rpcCode(err))

	// Without credentials, even a Get is refused.
	cfg := c.ClientConfig()
	cfg.Username, cfg.Password = "", ""
	anon, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = anon.Close() }()
	if _, err := anon.Get(ctx, "/some/key"); !errors.Is(err, rpctypes.ErrUserEmpty) {
		t.Errorf("anonymous Get error = %v, want %v", err, rpctypes.ErrUserEmpty)
	}
}

func TestAuthTLS(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{Auth: true, TLS: true})
	ctx := t.Context()
	root := c.ClientT(t)
	if _, err := root.Defragment(ctx, c.Endpoints()[0]); err != nil {
		t.Fatalf("root Defragment: %v", err)
	}
	// With a client certificate and no password, the CN is the user.
	cfg := c.ClientConfigAs(etcdtest.AliceUser)
	cfg.Username, cfg.Password = "", ""
	alice, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = alice.Close() }()
	if _, err := alice.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("alice (cert) Put: %v", err)
	}
	if _, err := alice.Defragment(ctx, c.Endpoints()[0]); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("alice (cert) Defragment error = %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}

func TestFillFragments(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	ctx := t.Context()
	cli := c.ClientT(t)
	res, err := etcddata.Fill(ctx, cli, etcddata.FillOptions{Keys: 5000, ValueSize: 1024, Garbage: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if res.Keys != 2500 || res.Garbage != 2500 || res.BytesWritten != 5000*1024 || res.Revision == 0 || len(res.Sizes) != 3 {
		t.Errorf("Fill() = %+v", res)
	}
	t.Logf("Fill: %+v", res)
	if err := c.WaitCompacted(ctx, res.Revision); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members() {
		var st *clientv3.StatusResponse
		for range 100 {
			if st, err = cli.Status(ctx, m.ClientURL); err != nil {
				t.Fatal(err)
			}
			if st.DbSize-st.DbSizeInUse > 1<<20 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if free := st.DbSize - st.DbSizeInUse; free <= 1<<20 {
			t.Errorf("%s: dbSize %d - dbSizeInUse %d = %d, want > 1 MiB", m.Name, st.DbSize, st.DbSizeInUse, free)
		}
		t.Logf("%s: dbSize %d dbSizeInUse %d", m.Name, st.DbSize, st.DbSizeInUse)
	}
	resp, err := cli.Get(ctx, etcddata.DefaultFillPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 2500 {
		t.Errorf("keys under prefix = %d, want 2500", resp.Count)
	}
}

func TestFillOverwriteAndQuota(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t, etcdtest.Options{Members: 1, QuotaBackendBytes: 8 << 20, UnsafeNoFsync: true})
	ctx := t.Context()
	cli := c.ClientT(t)
	res, err := etcddata.Fill(ctx, cli, etcddata.FillOptions{Keys: 1000, ValueSize: 1024, Garbage: 0.5, Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Keys != 1000 || res.Garbage != 500 || res.BytesWritten != 1500*1024 {
		t.Errorf("Fill(overwrite) = %+v", res)
	}
	_, err = etcddata.Fill(ctx, cli, etcddata.FillOptions{Prefix: "/big/", Keys: 100, ValueSize: 1 << 20})
	if !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Errorf("Fill past the quota: error = %v, want %v", err, rpctypes.ErrNoSpace)
	}
}

func TestCloseIdempotent(t *testing.T) {
	t.Parallel()
	etcdtest.SkipShort(t)
	c, err := etcdtest.Start(t.Context(), etcdtest.Options{Members: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.Close()
	t.Logf("Close of 1 member took %v", time.Since(start))
	c.Close()
	if eps := c.Endpoints(); len(eps) != 0 {
		t.Errorf("Endpoints() after Close = %v, want none", eps)
	}
	if _, err := c.Client(t.Context()); err == nil {
		t.Error("Client() after Close succeeded, want error")
	}
}

func TestLoggerTee(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	c := etcdtest.New(t, etcdtest.Options{Members: 1, Logger: zap.New(core)})
	if _, err := c.ClientT(t).Defragment(t.Context(), c.Endpoints()[0]); err != nil {
		t.Fatal(err)
	}
	if logs.Len() == 0 {
		t.Fatal("Options.Logger received no entries")
	}
	if n := logs.FilterField(zap.String("member", "m0")).Len(); n != logs.Len() {
		t.Errorf("%d of %d entries have member=m0, want all", n, logs.Len())
	}
	if n := logs.FilterMessage("finished defragmenting directory").Len(); n != 1 {
		t.Errorf("Options.Logger got %d 'finished defragmenting directory' entries, want 1", n)
	}
	if ds := c.Defrags(); len(ds) != 1 {
		t.Errorf("Defrags() = %v, want 1 with a tee logger", ds)
	}
}

// leaderDisagreement returns "" when Leader and every member's Status name
// the same leader, or else what differs.
func leaderDisagreement(t *testing.T, c *etcdtest.Cluster, eps []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	lead, err := c.Leader(ctx)
	if err != nil {
		return fmt.Sprintf("Leader: %v", err)
	}
	for _, ep := range eps {
		st, err := c.ClientT(t, ep).Status(ctx, ep)
		if err != nil {
			return fmt.Sprintf("Status(%s): %v", ep, err)
		}
		if st.Leader != lead.ID {
			return fmt.Sprintf("Status(%s).Leader = %x, Leader() = %x", ep, st.Leader, lead.ID)
		}
	}
	return ""
}
