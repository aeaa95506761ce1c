package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/agent"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// Config is the agent's whole configuration: what package agent needs
// (the embedded [agent.Config], whose keys stay flat), the [agent.Schedule],
// and what package main needs to connect, serve HTTP and log. The koanf tag
// of each field is its key (see [Keys]): the flag name, the YAML key ("."
// nests) and, through [EnvVar], the environment variable. Build one with
// [Default] or [Load]; check a hand-built one with [Config.Validate].
type Config struct {
	// Config holds the keys package agent reads, decoded into their final
	// types: defrag-rule is compiled into Rule. Its User, Identity and
	// Version are not keys; package main sets them.
	agent.Config `koanf:",squash"`

	// Endpoints are this member's client URLs, as for etcdctl: host:port,
	// http(s)://host:port or unix://path. The agent talks to its own member
	// through them and finds its peers through MemberList.
	Endpoints []string `koanf:"endpoints"`
	// CACert is the CA bundle that verifies the servers' certificates.
	CACert string `koanf:"cacert"`
	// Cert is the client certificate file; it goes with Key.
	Cert string `koanf:"cert"`
	// Key is the client certificate's private key file; it goes with Cert.
	Key string `koanf:"key"`
	// InsecureSkipTLSVerify skips server certificate verification.
	InsecureSkipTLSVerify bool `koanf:"insecure-skip-tls-verify"`
	// InsecureTransport allows plaintext connections when no TLS file is
	// given and the endpoints are not https (etcdctl's meaning).
	InsecureTransport bool `koanf:"insecure-transport"`
	// User is "name" or, as for etcdctl, "name:password". Load moves the
	// password part into Password, so a loaded Config holds only the name.
	// It is never quoted in a message.
	User string `koanf:"user"`
	// Password is the password of User. Prefer PasswordFile or the
	// ETCD_DEFRAG_PASSWORD variable: flags show in the process list.
	Password Secret `koanf:"password"`
	// PasswordFile is a file holding the password of User; Load reads it
	// and trims the trailing newline.
	PasswordFile string `koanf:"password-file"`
	// DialTimeout bounds establishing a client connection.
	DialTimeout time.Duration `koanf:"dial-timeout"`
	// KeepaliveTime is the client's gRPC keepalive interval.
	KeepaliveTime time.Duration `koanf:"keepalive-time"`
	// KeepaliveTimeout is how long the client waits for a keepalive answer.
	KeepaliveTimeout time.Duration `koanf:"keepalive-timeout"`
	// Schedule says when cycles run, parsed from a cron expression or
	// "@every <duration>" by [ParseSchedule].
	Schedule agent.Schedule `koanf:"schedule"`
	// Web configures the HTTP server.
	Web Web `koanf:",squash"`
	// Log configures the logger.
	Log Log `koanf:",squash"`

	// passwordFromFile is the content of PasswordFile, read by Load. It is
	// a pointer so that fmt prints an address, never the value, and it is
	// unexported so that JSON leaves it out.
	passwordFromFile *Secret
}

// Web configures the HTTP server of /metrics, /healthz, /readyz and /status.
type Web struct {
	// ListenAddress is the host:port to listen on; "" disables the HTTP
	// server.
	ListenAddress string `koanf:"web.listen-address"`
	// ConfigFile is an exporter-toolkit web configuration file that enables
	// TLS and basic authentication; "" serves plain HTTP.
	ConfigFile string `koanf:"web.config.file"`
}

// Log configures the logger.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"log.level"`
	// Format is text or json.
	Format string `koanf:"log.format"`
}

// Default returns the default configuration. It is valid: Load with no
// input returns it.
func Default() Config {
	r, err := rule.Compile(rule.Default)
	if err != nil {
		panic(fmt.Sprintf("config: the default rule does not compile: %v", err))
	}
	return Config{
		Config: agent.Config{
			Rule:                r,
			QuotaBytes:          2 * 1024 * 1024 * 1024,
			Cooldown:            time.Minute,
			CommandTimeout:      5 * time.Second,
			DefragTimeout:       10 * time.Minute,
			LockTimeout:         10 * time.Minute,
			LeaderWaitTimeout:   10 * time.Minute,
			LockPrefix:          "/etcd-defrag-agent/",
			LockTTL:             30 * time.Second,
			CompactionRetention: 10000,
			AutoDisalarm:        true,
			DisalarmThreshold:   0.9,
			VerifyHashKV:        true,
			DiskHeadroom:        0.2,
			GrowthWindow:        agent.DefaultGrowthWindow,
			Timezone:            agent.Timezone{Location: time.UTC},
		},
		Endpoints:         []string{"127.0.0.1:2379"},
		InsecureTransport: true,
		DialTimeout:       2 * time.Second,
		KeepaliveTime:     2 * time.Second,
		KeepaliveTimeout:  6 * time.Second,
		Schedule:          agent.Schedule{Every: time.Minute},
		Web:               Web{ListenAddress: ":9479"},
		Log:               Log{Level: "info", Format: "text"},
	}
}

// Credentials returns the user name and password for etcd authentication,
// or two empty strings without authentication. The password is, in order:
// the part of User after ":", Password (flag, variable or file key), or the
// content of PasswordFile read by Load.
func (c Config) Credentials() (user, password string) {
	name, pw, ok := strings.Cut(c.User, ":")
	switch {
	case ok:
		return name, pw
	case c.Password != "":
		return name, string(c.Password)
	case c.passwordFromFile != nil:
		return name, string(*c.passwordFromFile)
	default:
		return name, ""
	}
}

// Keys returns every configuration key, in the order of the README's
// table, in which problems are reported. They are the koanf tags of Config
// and agent.Config (a test keeps them in step).
func Keys() []string {
	return []string{
		"endpoints", "cacert", "cert", "key", "insecure-skip-tls-verify", "insecure-transport",
		"user", "password", "password-file", "dial-timeout", "command-timeout", "keepalive-time",
		"keepalive-timeout", "defrag-rule", "etcd-storage-quota-bytes", "compaction",
		"compaction-retention", "dry-run", "move-leader", "auto-disalarm", "disalarm-threshold",
		"once", "schedule", "cooldown", "defrag-timeout", "max-defrag-duration", "data-dir",
		"disk-headroom", "growth-window", "timezone", "lock-prefix", "lock-ttl", "lock-timeout",
		"leader-wait-timeout", "allow-quorum-loss", "verify-hashkv", "web.listen-address",
		"web.config.file", "log.level", "log.format",
	}
}

// EnvVar returns the environment variable of key: ETCD_DEFRAG_ and the key
// upper-cased, with "-" and "." turned into "_".
func EnvVar(key string) string {
	return envPrefix + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(key))
}

// envPrefix starts every variable the agent reads.
const envPrefix = "ETCD_DEFRAG_"

// envConfig names the configuration file; like the --config flag it is not a
// key.
const envConfig = envPrefix + "CONFIG"
