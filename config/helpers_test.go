package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
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
	for _, key := range Keys() {
		switch v := get(t, def, key).(type) {
		case []string:
			fs.StringSlice(key, v, "")
		case string:
			fs.String(key, v, "")
		case Secret:
			fs.String(key, string(v), "")
		case *rule.Rule:
			fs.String(key, v.String(), "")
		case agent.Schedule, agent.Timezone:
			fs.String(key, v.(fmt.Stringer).String(), "")
		case bool:
			fs.Bool(key, v, "")
		case int64:
			fs.Int64(key, v, "")
		case float64:
			fs.Float64(key, v, "")
		case time.Duration:
			fs.Duration(key, v, "")
		default:
			t.Fatalf("key %s: no test flag for %T", key, v)
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

// get returns the value of key in c: the field whose koanf tag is key.
func get(t testing.TB, c Config, key string) any {
	t.Helper()
	var find func(v reflect.Value) (reflect.Value, bool)
	find = func(v reflect.Value) (reflect.Value, bool) {
		for i := range v.NumField() {
			tag, opt, _ := strings.Cut(v.Type().Field(i).Tag.Get("koanf"), ",")
			if opt == "squash" {
				if f, ok := find(v.Field(i)); ok {
					return f, true
				}
			} else if tag == key {
				return v.Field(i), true
			}
		}
		return reflect.Value{}, false
	}
	f, ok := find(reflect.ValueOf(c))
	if !ok {
		t.Fatalf("no field of Config has the key %q", key)
	}
	return f.Interface()
}

// tags returns the koanf tags of the fields of t and of the structs it
// squashes, except "-".
func tags(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		tag, opt, _ := strings.Cut(t.Field(i).Tag.Get("koanf"), ",")
		switch {
		case opt == "squash":
			out = append(out, tags(t.Field(i).Type)...)
		case tag != "" && tag != "-":
			out = append(out, tag)
		}
	}
	return out
}
