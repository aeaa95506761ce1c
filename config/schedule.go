package config

import (
	"errors"
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // --timezone needs no zone files in a FROM scratch image

	"github.com/robfig/cron/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
)

// ParseSchedule parses s: "@every <duration>" with a positive Go duration
// (Every, for a gocron DurationJob), or anything robfig/cron's
// ParseStandard accepts (what gocron's CronJob accepts without seconds:
// 5 fields, or a descriptor such as @hourly, optionally after
// CRON_TZ=<zone>) that fires at least once (Cron).
func ParseSchedule(s string) (agent.Schedule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return agent.Schedule{}, errors.New("empty schedule (want a cron expression or @every <duration>)")
	}
	if rest, ok := strings.CutPrefix(s, "@every"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return agent.Schedule{}, fmt.Errorf("schedule %q: invalid duration after @every (want a duration with a unit, such as @every 5m)", s)
		}
		if d <= 0 {
			return agent.Schedule{}, fmt.Errorf("schedule %q: the interval must be positive", s)
		}
		return agent.Schedule{Every: d}, nil
	}
	sched, err := cron.ParseStandard(s)
	if err != nil {
		return agent.Schedule{}, fmt.Errorf("schedule %q: %w (want 5 cron fields, a descriptor such as @hourly, or @every <duration>)", s, err)
	}
	if sched.Next(time.Now()).IsZero() {
		return agent.Schedule{}, fmt.Errorf("schedule %q never fires", s)
	}
	return agent.Schedule{Cron: s}, nil
}

// ParseTimezone reads an IANA time zone name ("UTC", "Europe/Berlin"; the
// zone database is built into the binary, so it needs no files in the
// image). "Local", the machine's zone, is refused: in a container it is
// whatever the image says, not what the operator means.
func ParseTimezone(s string) (agent.Timezone, error) {
	if s == "" || s == "Local" {
		return agent.Timezone{}, fmt.Errorf("time zone %q: want an IANA name such as UTC or Europe/Berlin", s)
	}
	loc, err := time.LoadLocation(s)
	if err != nil {
		return agent.Timezone{}, fmt.Errorf("unknown time zone %q (want an IANA name such as UTC or Europe/Berlin)", s)
	}
	return agent.Timezone{Location: loc}, nil
}
