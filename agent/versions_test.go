package agent

import (
	"slices"
	"testing"
)

func TestKnownBugs(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    []string
	}{
		{"3.4.23", []string{"snapshot_apply_race"}},
		{"3.4.38", nil},
		{"3.5.0", []string{"crash_mid_defrag", "snapshot_apply_race"}},
		{"3.5.5", []string{"crash_mid_defrag", "snapshot_apply_race"}},
		{"3.5.6", []string{"snapshot_apply_race"}},
		{"3.5.22", []string{"snapshot_apply_race"}},
		{"3.5.23", nil},
		{"3.6.0-rc.1", []string{"snapshot_apply_race"}},
		{"3.6.4", []string{"snapshot_apply_race"}},
		{"3.6.5", nil},
		{"3.6.16", nil},
		{"3.7.0", nil},
		{"v3.5.2", []string{"crash_mid_defrag", "snapshot_apply_race"}},
		{"", nil},
		{"not a version", nil},
	} {
		t.Run(tc.version, func(t *testing.T) {
			var got []string
			for _, b := range knownBugs(tc.version) {
				got = append(got, b.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("knownBugs(%q) = %v, want %v", tc.version, got, tc.want)
			}
		})
	}
}
