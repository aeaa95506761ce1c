package coord_test

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/coord"
)

func TestKeys(t *testing.T) {
	const (
		member = uint64(0x8e9e05c52164694d)
		lease  = clientv3.LeaseID(0x694d7c3f0a3b1e02)
	)
	for _, prefix := range []string{"/etcd-defrag-agent/", "/etcd-defrag-agent"} {
		k := coord.NewKeys(prefix)
		tests := []struct {
			name, got, want string
		}{
			{"Prefix", k.Prefix(), "/etcd-defrag-agent/"},
			{"Lock", k.Lock(), "/etcd-defrag-agent/lock/"},
			{"NoSpace", k.NoSpace(), "/etcd-defrag-agent/nospace/"},
			{"Agents", k.Agents(), "/etcd-defrag-agent/agents/"},
			{"Agent", k.Agent(member, lease), "/etcd-defrag-agent/agents/8e9e05c52164694d/694d7c3f0a3b1e02"},
			{"Defrags", k.Defrags(), "/etcd-defrag-agent/defrag/"},
			{"Defrag", k.Defrag(member), "/etcd-defrag-agent/defrag/8e9e05c52164694d"},
			{"Lasts", k.Lasts(), "/etcd-defrag-agent/last/"},
			{"Last", k.Last(member), "/etcd-defrag-agent/last/8e9e05c52164694d"},
			{"Trends", k.Trends(), "/etcd-defrag-agent/trend/"},
			{"Trend", k.Trend(member), "/etcd-defrag-agent/trend/8e9e05c52164694d"},
			{"Health", k.Health(), "/etcd-defrag-agent/health"},
		}
		for _, tt := range tests {
			if tt.got != tt.want {
				t.Errorf("NewKeys(%q).%s = %q, want %q", prefix, tt.name, tt.got, tt.want)
			}
		}
	}
}

func TestKeysMemberOf(t *testing.T) {
	k := coord.NewKeys("/p")
	const member = uint64(0x8e9e05c52164694d)
	tests := []struct {
		name   string
		key    string
		want   uint64
		wantOK bool
	}{
		{"agent", k.Agent(member, 0x1234), member, true},
		{"agent without lease", k.Agents() + "1a", 0x1a, true},
		{"defrag", k.Defrag(member), member, true},
		{"last", k.Last(1), 1, true},
		{"largest ID", k.Last(^uint64(0)), ^uint64(0), true},
		{"trend", k.Trend(member), member, true},
		{"lock queue", k.Lock() + "1a", 0, false},
		{"nospace queue", k.NoSpace() + "1a", 0, false},
		{"health", k.Health(), 0, false},
		{"prefix only", k.Defrags(), 0, false},
		{"not hex", k.Defrags() + "xyz", 0, false},
		{"0x prefix", k.Defrags() + "0x1a", 0, false},
		{"too long", k.Lasts() + "1ffffffffffffffff", 0, false},
		{"negative", k.Lasts() + "-1", 0, false},
		{"empty member", k.Agents() + "/1", 0, false},
		{"another prefix", "/q/defrag/1a", 0, false},
		{"sibling of a per-member prefix", "/p/defrags/1a", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := k.MemberOf(tt.key)
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Errorf("MemberOf(%q) = %x, %v, want %x, %v", tt.key, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
