package config

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is a parsed schedule: exactly one of Every and Cron is set.
type Schedule struct {
	// Every is the interval of "@every <duration>", for a gocron
	// DurationJob.
	Every time.Duration
	// Cron is a cron expression (5 fields, or a descriptor such as @hourly,
	// optionally after CRON_TZ=<zone>), for a gocron CronJob without
	// seconds.
	Cron string
}

// ParseSchedule parses s: "@every <duration>" with a positive Go duration,
// or anything robfig/cron's ParseStandard accepts (what gocron's CronJob
// accepts without seconds) that fires at least once.
func ParseSchedule(s string) (Schedule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Schedule{}, errors.New("empty schedule (want a cron expression or @every <duration>)")
	}
	if rest, ok := strings.CutPrefix(s, "@every"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil {
			return Schedule{}, fmt.Errorf("schedule %q: invalid duration after @every (want a duration with a unit, such as @every 5m)", s)
		}
		if d <= 0 {
			return Schedule{}, fmt.Errorf("schedule %q: the interval must be positive", s)
		}
		return Schedule{Every: d}, nil
	}
	sched, err := cron.ParseStandard(s)
	if err != nil {
		return Schedule{}, fmt.Errorf("schedule %q: %w (want 5 cron fields, a descriptor such as @hourly, or @every <duration>)", s, err)
	}
	if sched.Next(time.Now()).IsZero() {
		return Schedule{}, fmt.Errorf("schedule %q never fires", s)
	}
	return Schedule{Cron: s}, nil
}
