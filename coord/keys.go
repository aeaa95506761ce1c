package coord

import (
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys is the key layout under one prefix. The zero value is not usable; use
// NewKeys.
type Keys struct {
	prefix string
}

// NewKeys returns the layout under prefix, which gets a trailing "/" if it has
// none.
func NewKeys(prefix string) Keys {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Keys{prefix: prefix}
}

// Prefix is the common prefix of every key, ending in "/".
func (k Keys) Prefix() string { return k.prefix }

// Lock is the prefix of the mutex queue.
func (k Keys) Lock() string { return k.prefix + "lock/" }

// NoSpace is the prefix of the queue that is taken under the NOSPACE alarm.
func (k Keys) NoSpace() string { return k.prefix + "nospace/" }

// Agents is the prefix of every agent announcement.
func (k Keys) Agents() string { return k.prefix + "agents/" }

// Agent is the announcement key of the agent with the given session lease
// beside the given member.
func (k Keys) Agent(member uint64, lease clientv3.LeaseID) string {
	return fmt.Sprintf("%s%x/%x", k.Agents(), member, int64(lease))
}

// Defrags is the prefix of the in-flight defragmentation records.
func (k Keys) Defrags() string { return k.prefix + "defrag/" }

// Defrag is the in-flight record of one member.
func (k Keys) Defrag(member uint64) string { return fmt.Sprintf("%s%x", k.Defrags(), member) }

// Lasts is the prefix of the last-defragmentation records.
func (k Keys) Lasts() string { return k.prefix + "last/" }

// Last is the last-defragmentation record of one member.
func (k Keys) Last(member uint64) string { return fmt.Sprintf("%s%x", k.Lasts(), member) }

// Trends is the prefix of the members' trend records.
func (k Keys) Trends() string { return k.prefix + "trend/" }

// Trend is the trend record of one member.
func (k Keys) Trend(member uint64) string { return fmt.Sprintf("%s%x", k.Trends(), member) }

// Health is the key read to prove a member answers linearizable reads. It is
// never written.
func (k Keys) Health() string { return k.prefix + "health" }

// MemberOf returns the member ID a key under one of the per-member prefixes
// (agents/, defrag/, last/, trend/) belongs to.
func (k Keys) MemberOf(key string) (uint64, bool) {
	for _, p := range []string{k.Agents(), k.Defrags(), k.Lasts(), k.Trends()} {
		rest, ok := strings.CutPrefix(key, p)
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, "/")
		v, err := strconv.ParseUint(id, 16, 64)
		if err != nil {
			return 0, false
		}
		return v, true
	}
	return 0, false
}
