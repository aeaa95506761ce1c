package config

import (
	"strings"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
)

func TestParseSchedule(t *testing.T) {
	tests := []struct {
		in   string
		want agent.Schedule
	}{
		{"@every 1m", agent.Schedule{Every: time.Minute}},
		{"  @every   90s ", agent.Schedule{Every: 90 * time.Second}},
		{"@every 1h30m", agent.Schedule{Every: 90 * time.Minute}},
		{"*/5 * * * *", agent.Schedule{Cron: "*/5 * * * *"}},
		{"0 3 * * 1-5", agent.Schedule{Cron: "0 3 * * 1-5"}},
		{"@hourly", agent.Schedule{Cron: "@hourly"}},
		{"@daily", agent.Schedule{Cron: "@daily"}},
		{"CRON_TZ=UTC 0 3 * * *", agent.Schedule{Cron: "CRON_TZ=UTC 0 3 * * *"}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSchedule(tc.in)
			if err != nil {
				t.Fatalf("ParseSchedule(%q) error: %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("ParseSchedule(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			// String is what --help shows as the default: it parses back.
			if again, err := ParseSchedule(got.String()); err != nil || again != got {
				t.Errorf("ParseSchedule(%q) = %+v, %v, want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestParseScheduleInvalid(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"", "empty schedule (want a cron expression or @every <duration>)"},
		{"@every 0s", `schedule "@every 0s": the interval must be positive`},
		{"@every -1m", `schedule "@every -1m": the interval must be positive`},
		{"@every", `schedule "@every": invalid duration after @every (want a duration with a unit, such as @every 5m)`},
		{"@every 5", `schedule "@every 5": invalid duration after @every (want a duration with a unit, such as @every 5m)`},
		{"@everyday", `schedule "@everyday": unrecognized descriptor: @everyday`},
		{"* * * *", `schedule "* * * *": expected exactly 5 fields, found 4: [* * * *]`},
		{"0 * * * * *", `schedule "0 * * * * *": expected exactly 5 fields, found 6`},
		{"61 * * * *", `schedule "61 * * * *": end of range (61) above maximum (59): 61`},
		{"0 0 30 2 *", `schedule "0 0 30 2 *" never fires`},
		{"1m", `schedule "1m": expected exactly 5 fields, found 1`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSchedule(tc.in)
			if err == nil {
				t.Fatalf("ParseSchedule(%q) = %+v, want an error", tc.in, got)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("ParseSchedule(%q) error = %q, want it to start with %q", tc.in, err, tc.want)
			}
		})
	}
}
