package agent

import (
	"fmt"
	"strconv"
	"strings"
)

// defragBug is a known etcd bug that a defragmentation can trigger.
type defragBug struct {
	// Name is the value of the bug label of
	// etcd_defrag_agent_known_defrag_bug.
	Name string
	// Affected reports whether an etcd version (major, minor, patch) has it.
	Affected func(major, minor, patch int) bool
	// Text says what happens and which version fixes it.
	Text string
}

// defragBugs are the etcd bugs the agent warns about. It warns and goes on:
// refusing to defragment would drive such a cluster into NOSPACE instead.
var defragBugs = []defragBug{
	{
		Name: "crash_mid_defrag",
		Affected: func(major, minor, patch int) bool {
			return major == 3 && minor == 5 && patch < 6
		},
		Text: "etcd 3.5.0-3.5.5: a crash during a defrag can leave this member's revision inconsistent (etcd PR 14730); upgrade to 3.5.6 or later",
	},
	{
		Name: "snapshot_apply_race",
		Affected: func(major, minor, patch int) bool {
			return major == 3 && (minor == 4 && patch < 38 || minor == 5 && patch < 23 || minor == 6 && patch < 5)
		},
		Text: "etcd before 3.4.38, 3.5.23 and 3.6.5: a snapshot applied while the member defragments can corrupt its backend (etcd issue 20271); upgrade",
	},
}

// knownBugs returns the known defrag bugs of an etcd version such as
// "3.5.4"; none for a version it cannot parse.
func knownBugs(version string) []defragBug {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) != 3 {
		return nil
	}
	var n [3]int
	for i, p := range parts {
		p, _, _ = strings.Cut(p, "-") // 3.6.0-rc.1
		v, err := strconv.Atoi(p)
		if err != nil {
			return nil
		}
		n[i] = v
	}
	var out []defragBug
	for _, b := range defragBugs {
		if b.Affected(n[0], n[1], n[2]) {
			out = append(out, b)
		}
	}
	return out
}

// checkVersion flags the member's etcd version when it has a known defrag
// bug: a warning the first time it is seen, the metric, and /status.
func (a *Agent) checkVersion(version string) []string {
	bugs := knownBugs(version)
	var texts []string
	for _, b := range defragBugs {
		a.metrics.knownBug.WithLabelValues(b.Name).Set(0)
	}
	for _, b := range bugs {
		a.metrics.knownBug.WithLabelValues(b.Name).Set(1)
		texts = append(texts, b.Text)
	}
	a.mu.Lock()
	seen := a.warnedVersion == version
	a.warnedVersion = version
	a.mu.Unlock()
	if !seen && len(texts) > 0 {
		a.log.Warn("etcd version with a known defrag bug", "etcd_version", version, "bugs", fmt.Sprint(texts))
	}
	return texts
}
