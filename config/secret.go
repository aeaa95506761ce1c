package config

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
)

// redacted is what a non-empty Secret shows instead of its value.
const redacted = "<redacted>"

// Secret is a string that is never printed: every fmt verb, JSON, text
// marshalling and slog show "<redacted>", or "" when the secret is empty,
// so a Config can be logged whole. Convert it with string(s) where the value
// is really needed, and nowhere else.
type Secret string

// String returns "<redacted>", or "" when s is empty.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString returns the Go syntax of the redacted value, for %#v.
func (s Secret) GoString() string {
	return "config.Secret(" + strconv.Quote(s.String()) + ")"
}

// Format implements fmt.Formatter so that no verb, not even a wrong one such
// as %d or %x, prints the value.
func (s Secret) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, s.GoString())
	case verb == 'q':
		_, _ = io.WriteString(f, strconv.Quote(s.String()))
	default:
		_, _ = io.WriteString(f, s.String())
	}
}

// MarshalJSON returns the redacted value as a JSON string.
func (s Secret) MarshalJSON() ([]byte, error) {
	return json.Marshal(s.String())
}

// MarshalText returns the redacted value, for YAML and other text encoders.
func (s Secret) MarshalText() ([]byte, error) {
	return []byte(s.String()), nil
}

// LogValue returns the redacted value, for log/slog.
func (s Secret) LogValue() slog.Value {
	return slog.StringValue(s.String())
}
