package config

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// testFlags returns a flag set with a flag for every key, typed like the
// key, and --config, parsed from args. The real one lives in package main;
// this one is built from the fields so that it cannot drift.
func testFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String(FlagConfig, "", "")
	fs.Bool(FlagCheckConfig, false, "")
	def := Default()
	for _, f := range fields() {
		switch v := def.get(f).(type) {
		case []string:
			fs.StringSlice(f.key, v, "")
		case string:
			fs.String(f.key, v, "")
		case Secret:
			fs.String(f.key, string(v), "")
		case bool:
			fs.Bool(f.key, v, "")
		case int64:
			fs.Int64(f.key, v, "")
		case float64:
			fs.Float64(f.key, v, "")
		case time.Duration:
			fs.Duration(f.key, v, "")
		default:
			t.Fatalf("key %s: no test flag for %T", f.key, v)
		}
	}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q) error: %v", args, err)
	}
	return fs
}

// writeFile writes content to name in a new temporary directory and returns
// its path.
func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
