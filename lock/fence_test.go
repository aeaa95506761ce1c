package lock_test

import (
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/lock"
)

func TestDeleteIfUnchanged(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const key = "/delete/k"
	old := putJSON(t, cli, key, note{Text: "old"})
	cur := putJSON(t, cli, key, note{Text: "rewritten"})
	tests := []struct {
		name        string
		rev         int64
		wantDeleted bool
	}{
		{"rewritten since", old, false},
		{"unchanged", cur, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deleted, err := lock.DeleteIfUnchanged(t.Context(), cli, key, tt.rev)
			if err != nil {
				t.Fatalf("DeleteIfUnchanged: %v", err)
			}
			if deleted != tt.wantDeleted {
				t.Errorf("DeleteIfUnchanged(rev %d) = %v, want %v", tt.rev, deleted, tt.wantDeleted)
			}
			if got, want := keyExists(t, cli, key), !tt.wantDeleted; got != want {
				t.Errorf("key exists after DeleteIfUnchanged(rev %d) = %v, want %v", tt.rev, got, want)
			}
		})
	}
}

func TestPutIfUnchanged(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	const (
		fence  = "/put-fence/record"
		target = "/put-fence/target"
	)
	old := putJSON(t, cli, fence, note{Text: "old"})
	cur := putJSON(t, cli, fence, note{Text: "rewritten"})
	tests := []struct {
		name   string
		fence  string
		rev    int64
		wantOK bool
	}{
		{"rewritten since", fence, old, false},
		{"absent, expected present", "/put-fence/missing", cur, false},
		{"present, expected absent", fence, 0, false},
		{"unchanged", fence, cur, true},
		{"absent, expected absent", "/put-fence/missing", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := cli.Delete(t.Context(), target); err != nil {
				t.Fatal(err)
			}
			ok, err := lock.PutIfUnchanged(t.Context(), cli, tt.fence, tt.rev, clientv3.OpPut(target, "v"))
			if err != nil {
				t.Fatalf("PutIfUnchanged: %v", err)
			}
			if ok != tt.wantOK {
				t.Errorf("PutIfUnchanged(%s, rev %d) = %v, want %v", tt.fence, tt.rev, ok, tt.wantOK)
			}
			if got := keyExists(t, cli, target); got != tt.wantOK {
				t.Errorf("target written = %v, want %v", got, tt.wantOK)
			}
		})
	}
}

// note is the record type of these tests.
type note struct {
	Text string
}

// putJSON writes v at key and returns the revision of the write.
func putJSON(t *testing.T, cli *clientv3.Client, key string, v note) int64 {
	t.Helper()
	resp, err := cli.Put(t.Context(), key, fmt.Sprint(v))
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}
