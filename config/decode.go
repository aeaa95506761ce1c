package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/v2"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// envText is a value from an environment variable: text to parse into the
// key's type, where a YAML or flag value must have the type already.
type envText string

// mapping stands for a YAML mapping given where a key takes a value.
type mapping struct{}

// unmarshal decodes ko's values over out: strictly (an unused key or a value
// of the wrong type is an error, nothing is converted weakly), through
// [convert]. With compile, it compiles defrag-rule and parses schedule; without,
// it only checks that they are strings. Each error is a
// *mapstructure.DecodeError naming the key.
func unmarshal(ko *koanf.Koanf, out *Config, compile bool) error {
	return ko.UnmarshalWithConf("", out, koanf.UnmarshalConf{
		FlatPaths: true, // the tags are the flat keys, under squashed structs
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook: func(_, to reflect.Type, v any) (any, error) {
				return convert(v, to, compile)
			},
			ErrorUnused:      true,  // an unknown key
			WeaklyTypedInput: false, // koanf's default turns "yes" into true
			TagName:          "koanf",
		},
	})
}

// problemsOf returns the message of each key's error in an error of
// unmarshal. A type error about user or password does not quote the value.
func problemsOf(err error) map[string]string {
	out := make(map[string]string)
	var walk func(error)
	walk = func(err error) {
		var te *typeError
		switch e := err.(type) { //nolint:errorlint // walks the wrap tree itself
		case nil:
		case *mapstructure.DecodeError:
			if errors.As(e, &te) {
				out[e.Name()] = te.message(e.Name() == "user" || e.Name() == "password")
			} else {
				out[e.Name()] = e.Unwrap().Error()
			}
		case interface{ Unwrap() []error }:
			for _, e := range e.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		default:
			out[""] = err.Error()
		}
	}
	walk(err)
	return out
}

// convert is the decode hook: it returns v, from YAML, a flag or an
// environment variable, in the type to, or an error that says what is wrong
// with it. Types it does not know pass unchanged.
func convert(v any, to reflect.Type, compile bool) (any, error) {
	durationType, ruleType, scheduleType := reflect.TypeFor[time.Duration](), reflect.TypeFor[*rule.Rule](), reflect.TypeFor[agent.Schedule]()
	timezoneType := reflect.TypeFor[agent.Timezone]()
	if text, ok := v.(envText); ok {
		s := string(text)
		switch kind := to.Kind(); {
		case kind == reflect.Bool:
			b, err := strconv.ParseBool(s)
			if err != nil {
				return nil, fmt.Errorf("invalid boolean %q (want true or false)", s)
			}
			return b, nil
		case kind == reflect.Int64 && to != durationType:
			n, err := strconv.ParseInt(s, 10, 64)
			if errors.Is(err, strconv.ErrRange) {
				return nil, fmt.Errorf("invalid integer %q: out of range", s)
			} else if err != nil {
				return nil, fmt.Errorf("invalid integer %q", s)
			}
			return n, nil
		case kind == reflect.Float64:
			x, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("invalid number %q", s)
			}
			return x, nil
		}
		v = s // the other keys read the text as a YAML string
	}
	switch to {
	case durationType:
		switch x := v.(type) {
		case time.Duration:
			return x, nil
		case string:
			return parseDuration(x)
		case mapping:
			return nil, &typeError{"a duration", x}
		}
		if _, ok := toFloat64(v); ok {
			return nil, fmt.Errorf("invalid duration %v: a duration needs a unit, such as \"%vs\"", v, v)
		}
		return nil, &typeError{`a duration such as "30s"`, v}
	case timezoneType:
		s, ok := v.(string)
		if !ok {
			return nil, &typeError{`a time zone name such as "UTC" or "Europe/Berlin"`, v}
		}
		return ParseTimezone(s)
	case ruleType, ruleType.Elem(), scheduleType:
		s, ok := v.(string)
		switch {
		case !ok:
			return nil, &typeError{"a string", v}
		case !compile:
			return nil, nil
		case to == scheduleType:
			return ParseSchedule(s)
		}
		r, err := rule.Compile(s)
		if err != nil || to == ruleType {
			return r, err
		}
		return *r, nil // mapstructure decodes into the element of a non-nil pointer
	case reflect.TypeFor[[]string]():
		switch x := v.(type) {
		case string:
			return splitList(x), nil
		case []string:
			return slices.Clone(x), nil
		case []any:
			out := make([]string, len(x))
			for i, e := range x {
				s, ok := e.(string)
				if !ok {
					return nil, &typeError{"a list of strings", listWith{e}}
				}
				out[i] = s
			}
			return out, nil
		}
		return nil, &typeError{"a list of strings", v}
	}
	switch to.Kind() {
	case reflect.String:
		_, ok := v.(string)
		return v, typeErrorUnless(ok, "a string", v)
	case reflect.Bool:
		_, ok := v.(bool)
		return v, typeErrorUnless(ok, "true or false", v)
	case reflect.Int64:
		n, ok := toInt64(v)
		return n, typeErrorUnless(ok, "an integer", v)
	case reflect.Float64:
		x, ok := toFloat64(v)
		return x, typeErrorUnless(ok, "a number", v)
	}
	return v, nil
}

// typeErrorUnless returns nil if ok, else a *typeError.
func typeErrorUnless(ok bool, want string, got any) error {
	if ok {
		return nil
	}
	return &typeError{want, got}
}

// typeError is a value of the wrong type for its key: a YAML integer for a
// string, a string for a boolean.
type typeError struct {
	want string // what the key takes: "a string", "true or false"...
	got  any
}

func (e *typeError) Error() string { return e.message(false) }

// message says what was expected and what was given; with redact, it names
// the type of the value but not the value.
func (e *typeError) message(redact bool) string {
	msg := fmt.Sprintf("expected %s, got %s", e.want, describe(e.got, redact))
	if e.want == "a string" && isScalar(e.got) {
		msg += " (quote it)"
	}
	return msg
}

// listWith is a list that holds elem, of the wrong type.
type listWith struct{ elem any }

// parseDuration parses a Go duration and refuses a bare number.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil {
		return d, nil
	}
	if _, ferr := strconv.ParseFloat(s, 64); ferr == nil {
		return 0, fmt.Errorf("invalid duration %q: a duration needs a unit, such as \"%ss\"", s, s)
	}
	return 0, fmt.Errorf("invalid duration %q (want a number with a unit, such as 30s, 10m or 1h30m)", s)
}

// splitList splits a comma separated list; an empty string is an empty list.
func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return []string{}
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return parts
}

func toInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		return int64(x), x <= math.MaxInt64
	case float64:
		// 2e9 in YAML is a float; accept it when it is a whole number.
		return int64(x), x == math.Trunc(x) && x >= math.MinInt64 && x < math.MaxInt64
	}
	return 0, false
}

func toFloat64(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

func isScalar(v any) bool {
	switch v.(type) {
	case bool, int, int64, uint64, float64, time.Time:
		return true
	}
	return false
}

// describe names the type and, unless redact, the value of v for a message.
func describe(v any, redact bool) string {
	var typ, val string
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		typ, val = "string", strconv.Quote(x)
	case bool:
		typ, val = "boolean", strconv.FormatBool(x)
	case int, int64, uint64:
		typ, val = "integer", fmt.Sprint(x)
	case float64:
		typ, val = "number", fmt.Sprint(x)
	case time.Time:
		typ, val = "timestamp", x.Format(time.RFC3339)
	case []any, []string:
		return "a list"
	case listWith:
		return "a list containing " + describe(x.elem, redact)
	case mapping, map[string]any:
		return "a mapping"
	default:
		return fmt.Sprintf("a value of type %T", v)
	}
	if redact {
		if strings.ContainsRune("aeiou", rune(typ[0])) {
			return "an " + typ
		}
		return "a " + typ
	}
	return typ + " " + val
}
