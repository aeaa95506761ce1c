package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrInvalid is matched, with errors.Is, by every error that [Load] and
// [Config.Validate] return: the configuration is bad, which is a usage error
// (exit code 2), not a runtime failure.
var ErrInvalid = errors.New("invalid configuration")

// Source names of the layers, as they appear in [Problem.Source].
const (
	sourceDefault    = "default"
	sourceFilePrefix = "config file "
	sourceEnvPrefix  = "env "
	sourceFlagPrefix = "flag --"
)

// Problem is one thing wrong with the configuration.
type Problem struct {
	// Key is the configuration key the problem is about, or "" when it is
	// not about one key (an unreadable file, an unknown variable).
	Key string
	// Source is where the value came from: "default", "config file PATH",
	// "env NAME" or "flag --NAME"; "" from Validate, which does not know.
	Source string
	// Message says what is wrong. It never contains the value of user or
	// password.
	Message string
}

// String returns the problem on one line, naming the input: for a flag or a
// variable, "flag --lock-ttl: MESSAGE" or "env ETCD_DEFRAG_COOLDOWN:
// MESSAGE" (the name says which key); for the file, `config file PATH: key
// "KEY": MESSAGE`; for a default value, "KEY (default): MESSAGE"; without a
// source, "KEY: MESSAGE".
func (p Problem) String() string {
	switch {
	case strings.HasPrefix(p.Source, sourceFilePrefix) && p.Key != "":
		return fmt.Sprintf("%s: key %q: %s", p.Source, p.Key, p.Message)
	case p.Source == sourceDefault && p.Key != "":
		return fmt.Sprintf("%s (default): %s", p.Key, p.Message)
	case p.Source != "":
		return p.Source + ": " + p.Message
	case p.Key != "":
		return p.Key + ": " + p.Message
	default:
		return p.Message
	}
}

// Error is every problem found in a configuration. It is returned as a
// *Error by Load and Validate and matches [ErrInvalid].
type Error struct {
	// Problems are in the order found: the file, the environment, the
	// flags, then the values in the order of [Keys].
	Problems []Problem
}

// Error returns the problems, one per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Is reports whether target is [ErrInvalid].
func (e *Error) Is(target error) bool {
	return target == ErrInvalid
}

// problems collects Problems; its err is nil when there are none.
type problems []Problem

func (ps *problems) add(key, source, format string, args ...any) {
	*ps = append(*ps, Problem{Key: key, Source: source, Message: fmt.Sprintf(format, args...)})
}

func (ps problems) err() error {
	if len(ps) == 0 {
		return nil
	}
	return &Error{Problems: ps}
}

// sortByKey sorts ps in the order of [Keys], as documented, and returns it.
func sortByKey(ps problems) problems {
	order := make(map[string]int)
	for i, key := range Keys() {
		order[key] = i
	}
	slices.SortStableFunc(ps, func(a, b Problem) int { return order[a.Key] - order[b.Key] })
	return ps
}
