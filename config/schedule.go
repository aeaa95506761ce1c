package config

import (
	"errors"
	"fmt"
	"strings"
	"time"

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
