//go:build e2e && linux

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// forEachLine runs fn as one subtest per etcd line of the version matrix
// (E2E_ETCD_VERSIONS, default all), one after the other: the machine has two
// cores, and the scenarios judge timing-sensitive behaviour.
func forEachLine(t *testing.T, fn func(t *testing.T, line string)) {
	lines, err := SelectedLines()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines {
		t.Run("etcd"+line, func(t *testing.T) { fn(t, line) })
	}
}

// within returns a context of t that ends after d, cancelled at cleanup.
func within(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// fragment fills the cluster, deletes a share of it and compacts, and checks
// that every member's Status shows at least minFree bytes free. It fails the
// test otherwise.
func fragment(t testing.TB, c *Cluster, opts etcddata.FillOptions, minFree int64) {
	t.Helper()
	ctx := within(t, 2*time.Minute)
	opts.NoCompact = false
	res, err := c.Fill(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members() {
		st, err := m.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if free := st.DbSize - st.DbSizeInUse; free < minFree {
			t.Fatalf("member %s: dbSize %d, dbSizeInUse %d: %d bytes free after the fill, want at least %d",
				m.Name, st.DbSize, st.DbSizeInUse, free, minFree)
		}
	}
	t.Logf("filled: %d MiB written, %d keys left, in %v", res.BytesWritten>>20, res.Keys, res.Took.Round(time.Millisecond))
}

// boolValue is 1 for true, for Record.
func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
