package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

func TestLoadPrecedence(t *testing.T) {
	file := writeFile(t, "agent.yml", `
endpoints: [file:2379]
lock-ttl: 20s
cooldown: 1m
dry-run: true
web:
  listen-address: ":1001"
log:
  level: debug
`)
	other := writeFile(t, "other.yml", "lock-ttl: 45s\n")
	withFile := "ETCD_DEFRAG_CONFIG=" + file

	tests := []struct {
		name string
		env  []string
		args []string
		key  string
		want any
	}{
		{name: "default", key: "lock-ttl", want: 30 * time.Second},
		{name: "file over default", env: []string{withFile}, key: "lock-ttl", want: 20 * time.Second},
		{name: "env over file", env: []string{withFile, "ETCD_DEFRAG_LOCK_TTL=25s"}, key: "lock-ttl", want: 25 * time.Second},
		{name: "flag over env", env: []string{withFile, "ETCD_DEFRAG_LOCK_TTL=25s"}, args: []string{"--lock-ttl=40s"}, key: "lock-ttl", want: 40 * time.Second},
		{name: "flag over default", args: []string{"--lock-ttl=40s"}, key: "lock-ttl", want: 40 * time.Second},
		{name: "unset flag does not override", env: []string{withFile}, args: []string{"--cooldown=2m"}, key: "lock-ttl", want: 20 * time.Second},
		{name: "file key untouched by env of another key", env: []string{withFile, "ETCD_DEFRAG_LOCK_TTL=25s"}, key: "cooldown", want: time.Minute},

		{name: "nested default", key: "web.listen-address", want: ":9479"},
		{name: "nested file", env: []string{withFile}, key: "web.listen-address", want: ":1001"},
		{name: "nested env", env: []string{withFile, "ETCD_DEFRAG_WEB_LISTEN_ADDRESS=:1002"}, key: "web.listen-address", want: ":1002"},
		{name: "nested flag", env: []string{withFile, "ETCD_DEFRAG_WEB_LISTEN_ADDRESS=:1002"}, args: []string{"--web.listen-address=:1003"}, key: "web.listen-address", want: ":1003"},
		{name: "nested env empty disables", env: []string{withFile, "ETCD_DEFRAG_WEB_LISTEN_ADDRESS="}, key: "web.listen-address", want: ""},
		{name: "log level file", env: []string{withFile}, key: "log.level", want: "debug"},
		{name: "log level env", env: []string{withFile, "ETCD_DEFRAG_LOG_LEVEL=warn"}, key: "log.level", want: "warn"},
		{name: "log level flag", env: []string{withFile, "ETCD_DEFRAG_LOG_LEVEL=warn"}, args: []string{"--log.level", "error"}, key: "log.level", want: "error"},
		{name: "log format untouched", env: []string{withFile}, key: "log.format", want: "text"},

		{name: "list default", key: "endpoints", want: []string{"127.0.0.1:2379"}},
		{name: "list file", env: []string{withFile}, key: "endpoints", want: []string{"file:2379"}},
		{name: "list env comma separated", env: []string{withFile, "ETCD_DEFRAG_ENDPOINTS=a:1, b:2"}, key: "endpoints", want: []string{"a:1", "b:2"}},
		{name: "list flag", env: []string{withFile, "ETCD_DEFRAG_ENDPOINTS=a:1,b:2"}, args: []string{"--endpoints=c:3,d:4"}, key: "endpoints", want: []string{"c:3", "d:4"}},
		{name: "list flag repeated", args: []string{"--endpoints=c:3", "--endpoints=d:4"}, key: "endpoints", want: []string{"c:3", "d:4"}},

		{name: "bool file", env: []string{withFile}, key: "dry-run", want: true},
		{name: "bool env false over file", env: []string{withFile, "ETCD_DEFRAG_DRY_RUN=false"}, key: "dry-run", want: false},
		{name: "bool flag over env", env: []string{"ETCD_DEFRAG_DRY_RUN=false"}, args: []string{"--dry-run"}, key: "dry-run", want: true},
		{name: "bool flag false over file", env: []string{withFile}, args: []string{"--dry-run=false"}, key: "dry-run", want: false},

		{name: "int env", env: []string{"ETCD_DEFRAG_ETCD_STORAGE_QUOTA_BYTES=8589934592"}, key: "etcd-storage-quota-bytes", want: int64(8 << 30)},
		{name: "float env", env: []string{"ETCD_DEFRAG_DISALARM_THRESHOLD=0.5"}, key: "disalarm-threshold", want: 0.5},
		{name: "secret env", env: []string{"ETCD_DEFRAG_USER=root", "ETCD_DEFRAG_PASSWORD=pw"}, key: "password", want: Secret("pw")},

		{name: "config flag over config env", env: []string{withFile}, args: []string{"--config", other}, key: "lock-ttl", want: 45 * time.Second},
		{name: "empty config flag means no file", env: []string{withFile}, args: []string{"--config="}, key: "lock-ttl", want: 30 * time.Second},
		{name: "service links ignored", env: []string{"ETCD_DEFRAG_SERVICE_HOST=10.0.0.1", "ETCD_DEFRAG_PORT=tcp://10.0.0.1:9479", "ETCD_DEFRAG_PORT_9479_TCP_ADDR=10.0.0.1"}, key: "lock-ttl", want: 30 * time.Second},
		{name: "first of repeated variable wins", env: []string{"ETCD_DEFRAG_LOCK_TTL=6s", "ETCD_DEFRAG_LOCK_TTL=7s"}, key: "lock-ttl", want: 6 * time.Second},
		{name: "other variables ignored", env: []string{"ETCD_NAME=etcd-0", "PATH=/bin", "ETCD_DEFRAG", "NOEQUALS"}, key: "lock-ttl", want: 30 * time.Second},
		{name: "lock prefix normalised", args: []string{"--lock-prefix=/x"}, key: "lock-prefix", want: "/x/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Sources{Flags: testFlags(t, tc.args...), Environ: tc.env})
			if err != nil {
				t.Fatalf("Load(env %q, args %q) error: %v", tc.env, tc.args, err)
			}
			if got := get(t, cfg, tc.key); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Load(env %q, args %q): %s = %#v, want %#v", tc.env, tc.args, tc.key, got, tc.want)
			}
		})
	}
}

// TestLoadTimezone: the zone by name from each layer, UTC by default, with
// the zone database of the binary.
func TestLoadTimezone(t *testing.T) {
	file := writeFile(t, "agent.yml", "timezone: America/New_York\n")
	tests := []struct {
		env  []string
		args []string
		want string
	}{
		{want: "UTC"},
		{env: []string{"ETCD_DEFRAG_CONFIG=" + file}, want: "America/New_York"},
		{env: []string{"ETCD_DEFRAG_CONFIG=" + file, "ETCD_DEFRAG_TIMEZONE=Asia/Tokyo"}, want: "Asia/Tokyo"},
		{env: []string{"ETCD_DEFRAG_TIMEZONE=Asia/Tokyo"}, args: []string{"--timezone=Europe/Berlin"}, want: "Europe/Berlin"},
	}
	for _, tc := range tests {
		cfg, err := Load(Sources{Flags: testFlags(t, tc.args...), Environ: tc.env})
		if err != nil {
			t.Fatalf("Load(env %q, args %q): %v", tc.env, tc.args, err)
		}
		if got := cfg.Timezone.String(); got != tc.want {
			t.Errorf("Load(env %q, args %q): timezone %q, want %q", tc.env, tc.args, got, tc.want)
		}
	}
	cfg, err := Load(Sources{Flags: testFlags(t, "--timezone=Europe/Berlin")})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC).In(cfg.Timezone.Loc())
	if at.Hour() != 14 {
		t.Errorf("12:00 UTC in Europe/Berlin in July is %v, want 14:00", at)
	}
}

// TestLoadRuleAndSchedule checks that Load hands out the rule compiled and
// the schedule parsed, from the layer that wins; a bad rule or schedule in a
// layer below it is not an error, like any other value a layer above
// replaces.
func TestLoadRuleAndSchedule(t *testing.T) {
	file := writeFile(t, "agent.yml", "defrag-rule: \"dbSize >\"\nschedule: \"61 * * * *\"\n")
	tests := []struct {
		name      string
		env       []string
		args      []string
		wantRule  string
		wantSched agent.Schedule
	}{
		{name: "default", wantRule: rule.Default, wantSched: agent.Schedule{Every: time.Minute}},
		{name: "env", env: []string{"ETCD_DEFRAG_DEFRAG_RULE=dbSize > 1", "ETCD_DEFRAG_SCHEDULE=@hourly"}, wantRule: "dbSize > 1", wantSched: agent.Schedule{Cron: "@hourly"}},
		{name: "flags over a bad file", env: []string{"ETCD_DEFRAG_CONFIG=" + file}, args: []string{"--defrag-rule=true", "--schedule=@every 90s"}, wantRule: "true", wantSched: agent.Schedule{Every: 90 * time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Sources{Flags: testFlags(t, tc.args...), Environ: tc.env})
			if err != nil {
				t.Fatalf("Load(env %q, args %q) error: %v", tc.env, tc.args, err)
			}
			if cfg.Rule == nil || cfg.Rule.String() != tc.wantRule {
				t.Errorf("Load(env %q, args %q): Rule = %v, want %q", tc.env, tc.args, cfg.Rule, tc.wantRule)
			}
			if cfg.Schedule != tc.wantSched {
				t.Errorf("Load(env %q, args %q): Schedule = %+v, want %+v", tc.env, tc.args, cfg.Schedule, tc.wantSched)
			}
		})
	}
}

// invalidCase is a configuration that Load must reject. Each string of want
// is one line of the error, in order; a line must equal it or, when it ends
// with "...", start with the part before.
type invalidCase struct {
	name string
	file string // loaded with --config; a testdata/invalid-<name>.yml
	env  []string
	args []string
	want []string
}

func TestLoadInvalid(t *testing.T) {
	tests := []invalidCase{
		// The file: keys and types.
		{name: "unknown key", file: "testdata/invalid-unknown-key.yml", want: []string{
			`config file testdata/invalid-unknown-key.yml: key "lock_ttl": unknown key (did you mean "lock-ttl"?)`,
		}},
		{name: "unknown nested key", file: "testdata/invalid-unknown-nested-key.yml", want: []string{
			`config file testdata/invalid-unknown-nested-key.yml: key "web.listen-adress": unknown key (did you mean "web.listen-address"?)`, //nolint:misspell // the typo under test
		}},
		{name: "command-line-only key", file: "testdata/invalid-config-key.yml", want: []string{
			`config file testdata/invalid-config-key.yml: key "config": unknown key`,
		}},
		{name: "section as scalar", file: "testdata/invalid-section-scalar.yml", want: []string{
			`config file testdata/invalid-section-scalar.yml: key "web": expected a mapping with keys listen-address, config.file, got integer 9479`,
		}},
		{name: "leaf as mapping", file: "testdata/invalid-leaf-mapping.yml", want: []string{
			`config file testdata/invalid-leaf-mapping.yml: key "lock-ttl": expected a duration, got a mapping`,
		}},
		{name: "key given twice", file: "testdata/invalid-duplicate-key.yml", want: []string{
			`config file testdata/invalid-duplicate-key.yml: key "web.listen-address": given twice`,
		}},
		{name: "null value", file: "testdata/invalid-null.yml", want: []string{
			`config file testdata/invalid-null.yml: key "cooldown": has no value (remove the key to use the default)`,
		}},
		{name: "bool as string", file: "testdata/invalid-bool-string.yml", want: []string{
			`config file testdata/invalid-bool-string.yml: key "dry-run": expected true or false, got string "yes please"`,
		}},
		{name: "integer as string", file: "testdata/invalid-int-string.yml", want: []string{
			`config file testdata/invalid-int-string.yml: key "etcd-storage-quota-bytes": expected an integer, got string "2Gi"`,
		}},
		{name: "string as number", file: "testdata/invalid-string-number.yml", want: []string{
			`config file testdata/invalid-string-number.yml: key "lock-prefix": expected a string, got integer 42 (quote it)`,
		}},
		{name: "list of mixed types", file: "testdata/invalid-list-type.yml", want: []string{
			`config file testdata/invalid-list-type.yml: key "endpoints": expected a list of strings, got a list containing integer 2379`,
		}},
		{name: "duration as bare integer", file: "testdata/invalid-duration-int.yml", want: []string{
			`config file testdata/invalid-duration-int.yml: key "cooldown": invalid duration 600: a duration needs a unit, such as "600s"`,
		}},
		{name: "duration unparsable", file: "testdata/invalid-duration-unparsable.yml", want: []string{
			`config file testdata/invalid-duration-unparsable.yml: key "defrag-timeout": invalid duration "ten minutes" (want a number with a unit, such as 30s, 10m or 1h30m)`,
		}},
		{name: "malformed YAML", file: "testdata/invalid-yaml.yml", want: []string{
			`config file testdata/invalid-yaml.yml: invalid YAML: line 1: did not find expected ',' or ']'`,
		}},
		{name: "missing file", file: "testdata/does-not-exist.yml", want: []string{
			`config file testdata/does-not-exist.yml: cannot read: no such file or directory`,
		}},
		{name: "file is a directory", file: "testdata", want: []string{
			`config file testdata: cannot read: is a directory`,
		}},

		// The file: values.
		{name: "negative duration", file: "testdata/invalid-duration-negative.yml", want: []string{
			`config file testdata/invalid-duration-negative.yml: key "lock-timeout": must be positive, got -1m0s`,
		}},
		{name: "negative cooldown", file: "testdata/invalid-cooldown-negative.yml", want: []string{
			`config file testdata/invalid-cooldown-negative.yml: key "cooldown": must not be negative, got -5s (0 disables the cooldown)`,
		}},
		{name: "data-dir a file", file: "testdata/invalid-data-dir-file.yml", want: []string{
			`config file testdata/invalid-data-dir-file.yml: key "data-dir": cannot use testdata/password: not a directory (want etcd's data directory)`,
		}},
		{name: "data-dir missing", file: "testdata/invalid-data-dir-missing.yml", want: []string{
			`config file testdata/invalid-data-dir-missing.yml: key "data-dir": cannot use testdata/no-such-dir: no such file or directory`,
		}},
		{name: "disk-headroom absurd", file: "testdata/invalid-disk-headroom.yml", want: []string{
			`config file testdata/invalid-disk-headroom.yml: key "disk-headroom": must be in [0, 1], got 50 (a fraction of the in-use size)`,
		}},
		{name: "max-defrag-duration negative", file: "testdata/invalid-max-defrag-duration-negative.yml", want: []string{
			`config file testdata/invalid-max-defrag-duration-negative.yml: key "max-defrag-duration": must not be negative, got -1s (0 disables the guard)`,
		}},
		{name: "max-defrag-duration beyond defrag-timeout", file: "testdata/invalid-max-defrag-duration-long.yml", want: []string{
			`config file testdata/invalid-max-defrag-duration-long.yml: key "max-defrag-duration": 2m0s is longer than defrag-timeout 1m0s: the agent stops waiting for a defragmentation after defrag-timeout`,
		}},
		{name: "lock-ttl fractional", file: "testdata/invalid-lock-ttl-fractional.yml", want: []string{
			`config file testdata/invalid-lock-ttl-fractional.yml: key "lock-ttl": must be a whole number of seconds, got 7.5s (it becomes an etcd lease TTL)`,
		}},
		{name: "lock-ttl too small", file: "testdata/invalid-lock-ttl-small.yml", want: []string{
			`config file testdata/invalid-lock-ttl-small.yml: key "lock-ttl": must be at least 5s, got 2s`,
		}},
		{name: "empty endpoints", file: "testdata/invalid-endpoints-empty.yml", want: []string{
			`config file testdata/invalid-endpoints-empty.yml: key "endpoints": no endpoint (want this member's client URL, such as https://127.0.0.1:2379)`,
		}},
		{name: "endpoint URL malformed", file: "testdata/invalid-endpoint-url.yml", want: []string{
			`config file testdata/invalid-endpoint-url.yml: key "endpoints": invalid endpoint "http//127.0.0.1:2379": invalid host "http//127.0.0.1" (want host:port, http(s)://host:port or unix://path)`,
		}},
		{name: "endpoint URL without port", file: "testdata/invalid-endpoint-no-port.yml", want: []string{
			`config file testdata/invalid-endpoint-no-port.yml: key "endpoints": invalid endpoint "https://127.0.0.1": missing port in address`,
		}},
		{name: "endpoint URL scheme", file: "testdata/invalid-endpoint-scheme.yml", want: []string{
			`config file testdata/invalid-endpoint-scheme.yml: key "endpoints": invalid endpoint "ftp://127.0.0.1:2379": unsupported scheme "ftp" (want http, https, unix or unixs)`,
		}},
		{name: "cert without key", file: "testdata/invalid-cert-without-key.yml", want: []string{
			`config file testdata/invalid-cert-without-key.yml: key "cert": set without key (cert and key go together)`,
		}},
		{name: "missing cacert file", file: "testdata/invalid-cacert-missing.yml", want: []string{
			`config file testdata/invalid-cacert-missing.yml: key "cacert": cannot read testdata/missing-ca.crt: no such file or directory`,
		}},
		{name: "bad cron", file: "testdata/invalid-cron.yml", want: []string{
			`config file testdata/invalid-cron.yml: key "schedule": schedule "61 * * * *": end of range (61) above maximum (59): 61 (want 5 cron fields, a descriptor such as @hourly, or @every <duration>)`,
		}},
		{name: "every zero", file: "testdata/invalid-every-zero.yml", want: []string{
			`config file testdata/invalid-every-zero.yml: key "schedule": schedule "@every 0s": the interval must be positive`,
		}},
		{name: "rule syntax", file: "testdata/invalid-rule-syntax.yml", want: []string{
			`config file testdata/invalid-rule-syntax.yml: key "defrag-rule": rule "dbSize >": unexpected token EOF...`,
		}},
		{name: "rule unknown variable", file: "testdata/invalid-rule-unknown-variable.yml", want: []string{
			`config file testdata/invalid-rule-unknown-variable.yml: key "defrag-rule": rule "dbsize > 1": unknown name dbsize (1:1); did you mean dbSize?...`,
		}},
		{name: "rule not boolean", file: "testdata/invalid-rule-not-bool.yml", want: []string{
			`config file testdata/invalid-rule-not-bool.yml: key "defrag-rule": rule "dbSize + 1": expected bool...`,
		}},
		{name: "disalarm threshold above 1", file: "testdata/invalid-disalarm-threshold.yml", want: []string{
			`config file testdata/invalid-disalarm-threshold.yml: key "disalarm-threshold": must be in (0, 1], got 1.5`,
		}},
		{name: "quota zero", file: "testdata/invalid-quota-zero.yml", want: []string{
			`config file testdata/invalid-quota-zero.yml: key "etcd-storage-quota-bytes": must be positive, got 0`,
		}},
		{name: "compaction retention zero", file: "testdata/invalid-compaction-retention-zero.yml", want: []string{
			`config file testdata/invalid-compaction-retention-zero.yml: key "compaction-retention": must be at least 1, got 0 (the agent never compacts to the newest revision)`,
		}},
		{name: "log level", file: "testdata/invalid-log-level.yml", want: []string{
			`config file testdata/invalid-log-level.yml: key "log.level": unknown level "verbose" (want debug, info, warn or error)`,
		}},
		{name: "log format", file: "testdata/invalid-log-format.yml", want: []string{
			`config file testdata/invalid-log-format.yml: key "log.format": unknown format "xml" (want text or json)`,
		}},
		{name: "listen address", file: "testdata/invalid-listen-address.yml", want: []string{
			`config file testdata/invalid-listen-address.yml: key "web.listen-address": invalid address "nohostport": missing port in address (want host:port or :port; empty disables the HTTP server)`,
		}},
		{name: "password twice", file: "testdata/invalid-password-twice.yml", want: []string{
			`config file testdata/invalid-password-twice.yml: key "password": password given twice: user has the form name:password and password is set too`,
		}},
		{name: "missing password file", file: "testdata/invalid-password-file-missing.yml", want: []string{
			`config file testdata/invalid-password-file-missing.yml: key "password-file": cannot read testdata/missing-password: no such file or directory`,
		}},
		{name: "bad web config file", file: "testdata/invalid-web-config-file.yml", want: []string{
			`config file testdata/invalid-web-config-file.yml: key "web.config.file": invalid web configuration testdata/web-config-bad.yml: ...`,
		}},
		{name: "several problems in the file", file: "testdata/invalid-many.yml", want: []string{
			`config file testdata/invalid-many.yml: key "cooldown": invalid duration 600: a duration needs a unit, such as "600s"`,
			`config file testdata/invalid-many.yml: key "dry-run": expected true or false, got string "no"`,
			`config file testdata/invalid-many.yml: key "lock_ttl": unknown key (did you mean "lock-ttl"?)`,
			`config file testdata/invalid-many.yml: key "log.level": unknown level "verbose" (want debug, info, warn or error)`,
		}},

		// The environment.
		{name: "unknown variable", env: []string{"ETCD_DEFRAG_LOCKTTL=30s"}, want: []string{
			`env ETCD_DEFRAG_LOCKTTL: unknown variable (did you mean "ETCD_DEFRAG_LOCK_TTL"?)`,
		}},
		{name: "command-line-only variable", env: []string{"ETCD_DEFRAG_CHECK_CONFIG=true"}, want: []string{
			`env ETCD_DEFRAG_CHECK_CONFIG: unknown variable`,
		}},
		{name: "env bool", env: []string{"ETCD_DEFRAG_DRY_RUN=yes please"}, want: []string{
			`env ETCD_DEFRAG_DRY_RUN: invalid boolean "yes please" (want true or false)`,
		}},
		{name: "env duration", env: []string{"ETCD_DEFRAG_COOLDOWN=ten"}, want: []string{
			`env ETCD_DEFRAG_COOLDOWN: invalid duration "ten" (want a number with a unit, such as 30s, 10m or 1h30m)`,
		}},
		{name: "env duration bare integer", env: []string{"ETCD_DEFRAG_LOCK_TTL=30"}, want: []string{
			`env ETCD_DEFRAG_LOCK_TTL: invalid duration "30": a duration needs a unit, such as "30s"`,
		}},
		{name: "env integer", env: []string{"ETCD_DEFRAG_ETCD_STORAGE_QUOTA_BYTES=2G"}, want: []string{
			`env ETCD_DEFRAG_ETCD_STORAGE_QUOTA_BYTES: invalid integer "2G"`,
		}},
		{name: "env integer out of range", env: []string{"ETCD_DEFRAG_COMPACTION_RETENTION=99999999999999999999"}, want: []string{
			`env ETCD_DEFRAG_COMPACTION_RETENTION: invalid integer "99999999999999999999": out of range`,
		}},
		{name: "env number", env: []string{"ETCD_DEFRAG_DISALARM_THRESHOLD=high"}, want: []string{
			`env ETCD_DEFRAG_DISALARM_THRESHOLD: invalid number "high"`,
		}},
		{name: "env lock-ttl fractional", env: []string{"ETCD_DEFRAG_LOCK_TTL=2.5s"}, want: []string{
			`env ETCD_DEFRAG_LOCK_TTL: must be a whole number of seconds, got 2.5s (it becomes an etcd lease TTL)`,
		}},
		{name: "env empty endpoints", env: []string{"ETCD_DEFRAG_ENDPOINTS="}, want: []string{
			`env ETCD_DEFRAG_ENDPOINTS: no endpoint (want this member's client URL, such as https://127.0.0.1:2379)`,
		}},
		{name: "env one bad endpoint of two", env: []string{"ETCD_DEFRAG_ENDPOINTS=127.0.0.1:2379,localhost"}, want: []string{
			`env ETCD_DEFRAG_ENDPOINTS: invalid endpoint "localhost": missing port in address (want host:port, http(s)://host:port or unix://path)`,
		}},
		{name: "env missing config file", env: []string{"ETCD_DEFRAG_CONFIG=testdata/nope.yml"}, want: []string{
			`config file testdata/nope.yml: cannot read: no such file or directory`,
		}},
		{name: "env key without cert", env: []string{"ETCD_DEFRAG_KEY=testdata/dummy.pem"}, want: []string{
			`env ETCD_DEFRAG_KEY: set without cert (cert and key go together)`,
		}},

		// The flags.
		{name: "flag lock-ttl fractional", args: []string{"--lock-ttl=2.5s"}, want: []string{
			`flag --lock-ttl: must be a whole number of seconds, got 2.5s (it becomes an etcd lease TTL)`,
		}},
		{name: "flag rule unknown variable", args: []string{"--defrag-rule", "dbsize > 1"}, want: []string{
			`flag --defrag-rule: rule "dbsize > 1": unknown name dbsize (1:1); did you mean dbSize?...`,
		}},
		{name: "flag empty rule", args: []string{"--defrag-rule="}, want: []string{
			`flag --defrag-rule: rule is empty`,
		}},
		{name: "flag every zero", args: []string{"--schedule=@every 0s"}, want: []string{
			`flag --schedule: schedule "@every 0s": the interval must be positive`,
		}},
		{name: "flag negative timeout", args: []string{"--dial-timeout=-1s"}, want: []string{
			`flag --dial-timeout: must be positive, got -1s`,
		}},
		{name: "flag command timeout too short", args: []string{"--command-timeout=300ms"}, want: []string{
			`flag --command-timeout: 300ms is too short: at least 1s, so that a request can go to another member while one defragments (each attempt waits at least 500ms)`,
		}},
		{name: "flag unknown time zone", args: []string{"--timezone=Mars/Olympus"}, want: []string{
			`flag --timezone: unknown time zone "Mars/Olympus" (want an IANA name such as UTC or Europe/Berlin)`,
		}},
		{name: "env local time zone", env: []string{"ETCD_DEFRAG_TIMEZONE=Local"}, want: []string{
			`env ETCD_DEFRAG_TIMEZONE: time zone "Local": want an IANA name such as UTC or Europe/Berlin`,
		}},
		{name: "flag growth window too short", args: []string{"--growth-window=10s"}, want: []string{
			`flag --growth-window: must be between 1m0s and 168h0m0s, got 10s (the span the growth rates are measured over)`,
		}},
		{name: "flag unix endpoint without path", args: []string{"--endpoints=unix://"}, want: []string{
			`flag --endpoints: invalid endpoint "unix://": no socket path`,
		}},
		{name: "flag password twice", args: []string{"--user=root:pw", "--password-file=testdata/password"}, want: []string{
			`flag --password-file: password given twice: user has the form name:password and password-file is set too`,
		}},
		{name: "flag password and password file", args: []string{"--user=root", "--password=pw", "--password-file=testdata/password"}, want: []string{
			`flag --password-file: password given twice: both password and password-file are set`,
		}},
		{name: "flag password without user", args: []string{"--password-file=testdata/password"}, want: []string{
			`flag --password-file: set without user`,
		}},
		{name: "flag missing config file", args: []string{"--config=testdata/nope.yml"}, want: []string{
			`config file testdata/nope.yml: cannot read: no such file or directory`,
		}},
		{name: "empty password file", args: []string{"--user=root", "--password-file=testdata/empty"}, want: []string{
			`flag --password-file: password file testdata/empty is empty`,
		}},

		// Every layer at once: all problems, file first, then the
		// environment, the flags and the values.
		{
			name: "several problems in several layers",
			file: "testdata/invalid-unknown-key.yml",
			env:  []string{"ETCD_DEFRAG_COOLDOWN=ten", "ETCD_DEFRAG_NOPE=1", "ETCD_DEFRAG_LOG_FORMAT=xml"},
			args: []string{"--lock-ttl=2.5s", "--disalarm-threshold=0"},
			want: []string{
				`config file testdata/invalid-unknown-key.yml: key "lock_ttl": unknown key (did you mean "lock-ttl"?)`,
				`env ETCD_DEFRAG_COOLDOWN: invalid duration "ten" (want a number with a unit, such as 30s, 10m or 1h30m)`,
				`env ETCD_DEFRAG_NOPE: unknown variable`,
				`flag --disalarm-threshold: must be in (0, 1], got 0`,
				`flag --lock-ttl: must be a whole number of seconds, got 2.5s (it becomes an etcd lease TTL)`,
				`env ETCD_DEFRAG_LOG_FORMAT: unknown format "xml" (want text or json)`,
			},
		},
		{
			// A rejected input hides the validation of the lower layer's
			// value for the same key.
			name: "rejected input is reported once",
			file: "testdata/invalid-lock-ttl-small.yml",
			env:  []string{"ETCD_DEFRAG_LOCK_TTL=oops"},
			want: []string{`env ETCD_DEFRAG_LOCK_TTL: invalid duration "oops"...`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config", tc.file}, args...)
			}
			testInvalid(t, tc, args)
		})
	}
}

func testInvalid(t *testing.T, tc invalidCase, args []string) {
	t.Helper()
	var fs = testFlags(t)
	// Parse here rather than in testFlags: a bad value must reach Load,
	// so flags that pflag itself would reject are set with Set.
	for i := 0; i < len(args); i++ {
		name, value, ok := strings.Cut(strings.TrimPrefix(args[i], "--"), "=")
		if !ok {
			i++
			value = args[i]
		}
		if err := fs.Set(name, value); err != nil {
			t.Fatalf("Set(%q, %q) error: %v", name, value, err)
		}
	}
	cfg, err := Load(Sources{Flags: fs, Environ: tc.env})
	if err == nil {
		t.Fatalf("Load(env %q, args %q) = %+v, want an error", tc.env, args, cfg)
	}
	var cerr *Error
	if !errors.As(err, &cerr) || !errors.Is(err, ErrInvalid) {
		t.Errorf("Load() error %v (%T) is not a *Error matching ErrInvalid", err, err)
	}
	if !reflect.DeepEqual(cfg, Config{}) {
		t.Errorf("Load() with an error returned %+v, want the zero Config", cfg)
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(tc.want) {
		t.Fatalf("Load() error has %d lines, want %d:\n%s\nwant:\n%s", len(got), len(tc.want), err, strings.Join(tc.want, "\n"))
	}
	for i, want := range tc.want {
		if prefix, ok := strings.CutSuffix(want, "..."); ok {
			if !strings.HasPrefix(got[i], prefix) {
				t.Errorf("Load() error line %d =\n%s\nwant it to start with\n%s", i, got[i], prefix)
			}
		} else if got[i] != want {
			t.Errorf("Load() error line %d =\n%s\nwant\n%s", i, got[i], want)
		}
	}
	if len(cerr.Problems) != len(tc.want) {
		t.Errorf("Load() error has %d problems, want %d", len(cerr.Problems), len(tc.want))
	}
}
