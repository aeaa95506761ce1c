package main

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/config"
)

// TestFlagNamesAreKeys checks that every key has a flag of the same name and
// that there is no other flag but the command-line-only ones.
func TestFlagNamesAreKeys(t *testing.T) {
	commandLineOnly := []string{config.FlagConfig, config.FlagCheckConfig, config.FlagVersion, config.FlagHelp}
	var got []string
	newFlagSet(config.Default()).VisitAll(func(f *pflag.Flag) {
		if !slices.Contains(commandLineOnly, f.Name) {
			got = append(got, f.Name)
		}
	})
	slices.Sort(got)
	want := slices.Sorted(slices.Values(config.Keys()))
	if !slices.Equal(got, want) {
		t.Errorf("flags = %q,\nwant the keys %q", got, want)
	}
}

// TestFlagDefaults checks, flag by flag, that loading the flag's default as
// if the user had typed it gives Default(): the default shown in --help is
// the real one, and the flag's type decodes into the key.
func TestFlagDefaults(t *testing.T) {
	want := config.Default()
	for _, key := range config.Keys() {
		t.Run(key, func(t *testing.T) {
			fs := newFlagSet(config.Default())
			f := fs.Lookup(key)
			if f == nil {
				t.Fatalf("no flag --%s", key)
			}
			f.Changed = true // as if the user typed --key=<default>
			got, err := config.Load(config.Sources{Flags: fs})
			if err != nil {
				t.Fatalf("Load(--%s=%s) error: %v", key, f.DefValue, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load(--%s=%s) =\n%+v\nwant Default()\n%+v", key, f.DefValue, got, want)
			}
		})
	}
}

// TestFlagDefaultsFollowDef checks that the defaults come from the Config
// passed in, not from constants of their own.
func TestFlagDefaultsFollowDef(t *testing.T) {
	def := config.Default()
	def.LockTTL = 42 * time.Second
	def.Endpoints = []string{"a:1", "b:2"}
	def.Log.Level = "debug"
	fs := newFlagSet(def)
	for name, want := range map[string]string{
		"lock-ttl":        "42s",
		"endpoints":       "[a:1,b:2]",
		"log.level":       "debug",
		"cooldown":        "1m0s",
		"once":            "false",
		"config":          "",
		"password":        "",
		"web.config.file": "",
	} {
		if got := fs.Lookup(name).DefValue; got != want {
			t.Errorf("--%s default = %q, want %q", name, got, want)
		}
	}
}

func TestFlagsLoad(t *testing.T) {
	fs := newFlagSet(config.Default())
	args := []string{
		"--endpoints=https://10.0.0.1:2379,https://10.0.0.2:2379",
		"--lock-ttl", "15s",
		"--web.listen-address=:9000",
		"--log.level=debug",
		"--dry-run",
		"--disalarm-threshold=0.5",
		"--etcd-storage-quota-bytes=8589934592",
	}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q) error: %v", args, err)
	}
	got, err := config.Load(config.Sources{Flags: fs})
	if err != nil {
		t.Fatalf("Load(%q) error: %v", args, err)
	}
	want := config.Default()
	want.Endpoints = []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}
	want.LockTTL = 15 * time.Second
	want.Web.ListenAddress = ":9000"
	want.Log.Level = "debug"
	want.DryRun = true
	want.DisalarmThreshold = 0.5
	want.QuotaBytes = 8 << 30
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(%q) =\n%+v\nwant\n%+v", args, got, want)
	}
}

func TestFlagParseErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--lock_ttl=30s"}, "unknown flag: --lock_ttl"},
		{"unknown etcd-defrag flag", []string{"--cluster"}, "unknown flag: --cluster"},
		{"duration", []string{"--lock-ttl=ten"}, `invalid argument "ten" for "--lock-ttl" flag`},
		{"bare integer duration", []string{"--cooldown=600"}, `invalid argument "600" for "--cooldown" flag`},
		{"bool", []string{"--dry-run=yes"}, `invalid argument "yes" for "--dry-run" flag`},
		{"integer", []string{"--etcd-storage-quota-bytes=2G"}, `invalid argument "2G" for "--etcd-storage-quota-bytes" flag`},
		{"number", []string{"--disalarm-threshold=high"}, `invalid argument "high" for "--disalarm-threshold" flag`},
		{"missing value", []string{"--schedule"}, "flag needs an argument: --schedule"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := newFlagSet(config.Default()).Parse(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%q) error = %v, want one containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestFlagHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		if err := newFlagSet(config.Default()).Parse([]string{arg}); !errors.Is(err, pflag.ErrHelp) {
			t.Errorf("Parse(%q) error = %v, want pflag.ErrHelp", arg, err)
		}
	}
}

// TestFlagUsage pins the usage of the flags carried over from etcdctl and
// etcd-defrag, and that the password's usage steers users away from argv.
func TestFlagUsage(t *testing.T) {
	fs := newFlagSet(config.Default())
	tests := []struct {
		name, want string
	}{
		{"endpoints", "comma separated etcd endpoints (this agent's own member)"},
		{"cacert", "verify certificates of TLS-enabled secure servers using this CA bundle"},
		{"cert", "identify secure client using this TLS certificate file"},
		{"key", "identify secure client using this TLS key file"},
		{"insecure-skip-tls-verify", "skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)"},
		{"insecure-transport", "disable transport security for client connections"},
		{"user", "username[:password] for authentication"},
		{"dial-timeout", "dial timeout for client connections"},
		{"keepalive-time", "keepalive time for client connections"},
		{"keepalive-timeout", "keepalive timeout for client connections"},
		{"version", "print the version and exit"},
	}
	for _, tc := range tests {
		if got := fs.Lookup(tc.name).Usage; got != tc.want {
			t.Errorf("--%s usage = %q, want %q", tc.name, got, tc.want)
		}
	}
	pw := fs.Lookup("password").Usage
	for _, want := range []string{"--password-file", "ETCD_DEFRAG_PASSWORD"} {
		if !strings.Contains(pw, want) {
			t.Errorf("--password usage = %q, want it to mention %s", pw, want)
		}
	}
}
