package config

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// TestKeys pins the public interface: the keys are the flag names, the YAML
// keys and, through EnvVar, the variables users put in manifests.
func TestKeys(t *testing.T) {
	want := []string{
		"endpoints", "cacert", "cert", "key", "insecure-skip-tls-verify", "insecure-transport",
		"user", "password", "password-file", "dial-timeout", "command-timeout", "keepalive-time",
		"keepalive-timeout", "defrag-rule", "etcd-storage-quota-bytes", "compaction",
		"compaction-retention", "dry-run", "move-leader", "auto-disalarm", "disalarm-threshold",
		"once", "schedule", "cooldown", "defrag-timeout", "max-defrag-duration", "data-dir",
		"disk-headroom", "growth-window", "timezone", "lock-prefix", "lock-ttl", "lock-timeout",
		"leader-wait-timeout", "allow-quorum-loss", "verify-hashkv", "web.listen-address",
		"web.config.file", "log.level", "log.format",
	}
	if got := Keys(); !slices.Equal(got, want) {
		t.Errorf("Keys() = %q, want %q", got, want)
	}
	// Every key is a field's koanf tag, and every tag a key.
	if got := slices.Sorted(slices.Values(tags(reflect.TypeFor[Config]()))); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("koanf tags of Config = %q, want the keys", got)
	}
}

func TestEnvVar(t *testing.T) {
	tests := []struct {
		key, want string
	}{
		{"endpoints", "ETCD_DEFRAG_ENDPOINTS"},
		{"lock-ttl", "ETCD_DEFRAG_LOCK_TTL"},
		{"etcd-storage-quota-bytes", "ETCD_DEFRAG_ETCD_STORAGE_QUOTA_BYTES"},
		{"web.listen-address", "ETCD_DEFRAG_WEB_LISTEN_ADDRESS"},
		{"web.config.file", "ETCD_DEFRAG_WEB_CONFIG_FILE"},
		{"log.level", "ETCD_DEFRAG_LOG_LEVEL"},
		{"config", "ETCD_DEFRAG_CONFIG"},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			if got := EnvVar(tc.key); got != tc.want {
				t.Errorf("EnvVar(%q) = %q, want %q", tc.key, got, tc.want)
			}
		})
	}
}

// TestEnvVarsUnique checks that no two keys share a variable, and that none
// is taken by ETCD_DEFRAG_CONFIG or by the Kubernetes service links.
func TestEnvVarsUnique(t *testing.T) {
	seen := map[string]string{envConfig: "--config"}
	for _, key := range Keys() {
		name := EnvVar(key)
		if other, ok := seen[name]; ok {
			t.Errorf("keys %s and %s share the variable %s", other, key, name)
		}
		if isServiceLink(name) {
			t.Errorf("key %s: variable %s looks like a Kubernetes service link", key, name)
		}
		seen[name] = key
	}
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v, want nil", err)
	}
}

// TestLoadNothing checks that Load without input returns Default, and that
// every key has a default that decodes to its field (Load goes through the
// same merge for defaults as for the layers).
func TestLoadNothing(t *testing.T) {
	got, err := Load(Sources{})
	if err != nil {
		t.Fatalf("Load() error: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("Load() = %+v, want %+v", got, want)
	}
}

// TestLoadEveryKey loads a file that sets every key to a value other than
// its default, so that a key the decoder mishandles shows.
func TestLoadEveryKey(t *testing.T) {
	got, err := Load(Sources{Flags: testFlags(t, "--config", "testdata/valid.yml")})
	if err != nil {
		t.Fatalf("Load(valid.yml) error: %v", err)
	}
	def := Default()
	for _, key := range Keys() {
		if key == "password" {
			continue // filled from password-file through Credentials
		}
		if reflect.DeepEqual(get(t, got, key), get(t, def, key)) {
			t.Errorf("key %s = %v, the default; valid.yml should set every key", key, get(t, got, key))
		}
	}
	r, err := rule.Compile("dbQuotaUsage > 0.8 || dbSizeFree > 200*1024*1024")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Config: agent.Config{
			Rule:                r,
			QuotaBytes:          8 << 30,
			Cooldown:            time.Hour,
			CommandTimeout:      7 * time.Second,
			DefragTimeout:       2 * time.Minute,
			LockTimeout:         3 * time.Minute,
			LeaderWaitTimeout:   4 * time.Minute,
			LockPrefix:          "/defrag/",
			LockTTL:             15 * time.Second,
			Compaction:          true,
			CompactionRetention: 5000,
			DryRun:              true,
			MoveLeader:          true,
			AutoDisalarm:        false,
			DisalarmThreshold:   0.75,
			AllowQuorumLoss:     true,
			VerifyHashKV:        false,
			MaxDefragDuration:   90 * time.Second,
			DataDir:             "testdata",
			DiskHeadroom:        0.5,
			GrowthWindow:        2 * time.Hour,
			Once:                true,
		},
		Endpoints:             []string{"https://127.0.0.1:2379", "https://[::1]:2379"},
		CACert:                "testdata/dummy.pem",
		Cert:                  "testdata/dummy.pem",
		Key:                   "testdata/dummy.pem",
		InsecureSkipTLSVerify: true,
		InsecureTransport:     false,
		User:                  "root",
		PasswordFile:          "testdata/password",
		DialTimeout:           3 * time.Second,
		KeepaliveTime:         4 * time.Second,
		KeepaliveTimeout:      8 * time.Second,
		Schedule:              agent.Schedule{Cron: "*/5 * * * *"},
		Web:                   Web{ListenAddress: "127.0.0.1:9999", ConfigFile: "testdata/web-config.yml"},
		Log:                   Log{Level: "debug", Format: "json"},
	}
	pw := Secret("filepw")
	want.passwordFromFile = &pw
	// A zone is compared by name: each load makes a new *time.Location.
	if got.Timezone.String() != "Europe/Berlin" {
		t.Errorf("timezone %v, want Europe/Berlin", got.Timezone)
	}
	want.Timezone = got.Timezone
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(valid.yml) =\n%#v\nwant\n%#v", got, want)
	}
	if user, password := got.Credentials(); user != "root" || password != "filepw" {
		t.Errorf("Credentials() = %q, %q, want %q, %q", user, password, "root", "filepw")
	}
	// A loaded configuration stays valid.
	if err := got.Validate(); err != nil {
		t.Errorf("Validate() of the loaded configuration = %v, want nil", err)
	}
}

func TestCredentials(t *testing.T) {
	filePW := Secret("from-file")
	tests := []struct {
		name         string
		cfg          Config
		wantUser     string
		wantPassword string
	}{
		{name: "none", cfg: Config{}},
		{name: "user only", cfg: Config{User: "root"}, wantUser: "root"},
		{name: "user with password", cfg: Config{User: "root:pw:with:colons"}, wantUser: "root", wantPassword: "pw:with:colons"},
		{name: "password", cfg: Config{User: "root", Password: "pw"}, wantUser: "root", wantPassword: "pw"},
		{name: "password file", cfg: Config{User: "root", PasswordFile: "x", passwordFromFile: &filePW}, wantUser: "root", wantPassword: "from-file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			user, password := tc.cfg.Credentials()
			if user != tc.wantUser || password != tc.wantPassword {
				t.Errorf("Credentials() = %q, %q, want %q, %q", user, password, tc.wantUser, tc.wantPassword)
			}
		})
	}
}

func TestValidateReturnsError(t *testing.T) {
	c := Default()
	c.LockTTL = time.Second
	c.Log.Level = "loud"
	err := c.Validate()
	var cerr *Error
	if !errors.As(err, &cerr) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate() = %v (%T), want a *Error matching ErrInvalid", err, err)
	}
	want := "lock-ttl: must be at least 5s, got 1s\nlog.level: unknown level \"loud\" (want debug, info, warn or error)"
	if got := err.Error(); got != want {
		t.Errorf("Validate() error =\n%s\nwant\n%s", got, want)
	}
}
