package coord_test

import (
	"reflect"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

// note is the record type of these tests.
type note struct {
	Text  string `json:"text"`
	Count int    `json:"count"`
}

// putJSON writes v as JSON at key and returns the revision of the write.
func putJSON(t *testing.T, cli *clientv3.Client, key string, v any) int64 {
	t.Helper()
	op, err := coord.OpPutJSON(key, v)
	if err != nil {
		t.Fatalf("OpPutJSON(%s): %v", key, err)
	}
	resp, err := cli.Do(t.Context(), op)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp.Put().Header.Revision
}

func TestGet(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	goodRev := putJSON(t, cli, "/get/good", note{Text: "hello", Count: 2})
	if _, err := cli.Put(t.Context(), "/get/bad", "{not json"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		key       string
		want      coord.Record[note]
		wantFound bool
		wantErr   bool
	}{
		{"found", "/get/good", coord.Record[note]{Key: "/get/good", Value: note{"hello", 2}, Revision: goodRev}, true, false},
		{"not found", "/get/missing", coord.Record[note]{}, false, false},
		{"not JSON", "/get/bad", coord.Record[note]{}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := coord.Get[note](t.Context(), cli, tt.key)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Get(%s): err = %v, want error %v", tt.key, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.key) {
				t.Errorf("Get(%s): err = %q, want it to name the key", tt.key, err)
			}
			if found != tt.wantFound {
				t.Errorf("Get(%s): found = %v, want %v", tt.key, found, tt.wantFound)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Get(%s) = %+v, want %+v", tt.key, got, tt.want)
			}
		})
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	_, cli := newCluster(t)
	revA := putJSON(t, cli, "/list/a", note{Text: "a", Count: 1})
	if _, err := cli.Put(t.Context(), "/list/b", "v2:binary"); err != nil {
		t.Fatal(err)
	}
	revC := putJSON(t, cli, "/list/c", note{Text: "c", Count: 3})
	putJSON(t, cli, "/list-other/d", note{Text: "beside the prefix"})

	recs, bad, err := coord.List[note](t.Context(), cli, "/list/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	want := []coord.Record[note]{
		{Key: "/list/a", Value: note{"a", 1}, Revision: revA},
		{Key: "/list/c", Value: note{"c", 3}, Revision: revC},
	}
	if !reflect.DeepEqual(recs, want) {
		t.Errorf("List records = %+v, want %+v", recs, want)
	}
	if len(bad) != 1 || !strings.Contains(bad[0].Error(), "/list/b") {
		t.Errorf("List bad = %v, want one error about /list/b", bad)
	}

	recs, bad, err = coord.List[note](t.Context(), cli, "/list-empty/")
	if err != nil || len(recs) != 0 || len(bad) != 0 {
		t.Errorf("List of an empty prefix = %v, %v, %v, want nothing", recs, bad, err)
	}
}

func TestOpPutJSON(t *testing.T) {
	if _, err := coord.OpPutJSON("/k", make(chan int)); err == nil {
		t.Error("OpPutJSON of a channel: err = nil, want an encoding error")
	}
	op, err := coord.OpPutJSON("/k", note{Text: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(op.ValueBytes()), `{"text":"x","count":0}`; got != want {
		t.Errorf("OpPutJSON value = %s, want %s", got, want)
	}
}
