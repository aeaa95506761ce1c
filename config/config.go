package config

import (
	"reflect"
	"strings"
	"time"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/rule"
)

// Config is the agent's whole configuration. The koanf tag of each field is
// its key: the flag name, the YAML key ("." nests) and, through [EnvVar],
// the environment variable. Build one with [Default] or [Load]; check a
// hand-built one with [Config.Validate].
type Config struct {
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
	User string `koanf:"user" redact:"true"`
	// Password is the password of User. Prefer PasswordFile or the
	// ETCD_DEFRAG_PASSWORD variable: flags show in the process list.
	Password Secret `koanf:"password"`
	// PasswordFile is a file holding the password of User; Load reads it
	// and trims the trailing newline.
	PasswordFile string `koanf:"password-file"`
	// DialTimeout bounds establishing a client connection.
	DialTimeout time.Duration `koanf:"dial-timeout"`
	// CommandTimeout bounds each single etcd request.
	CommandTimeout time.Duration `koanf:"command-timeout"`
	// KeepaliveTime is the client's gRPC keepalive interval.
	KeepaliveTime time.Duration `koanf:"keepalive-time"`
	// KeepaliveTimeout is how long the client waits for a keepalive answer.
	KeepaliveTimeout time.Duration `koanf:"keepalive-timeout"`
	// DefragRule is the rule (package rule) that decides whether the member
	// needs a defragmentation.
	DefragRule string `koanf:"defrag-rule"`
	// EtcdStorageQuotaBytes is the member's --quota-backend-bytes, used when
	// Status does not report the quota (etcd before 3.6).
	EtcdStorageQuotaBytes int64 `koanf:"etcd-storage-quota-bytes"`
	// Compaction compacts before a defragmentation, keeping
	// CompactionRetention revisions. Off by default, unlike etcd-defrag:
	// kube-apiserver compacts by itself, and compacting to the newest
	// revision throws away the watch history.
	Compaction bool `koanf:"compaction"`
	// CompactionRetention is the number of newest revisions a compaction
	// keeps; at least 1, so the agent never compacts to the newest revision.
	CompactionRetention int64 `koanf:"compaction-retention"`
	// DryRun evaluates the rule and logs the decision but never
	// defragments.
	DryRun bool `koanf:"dry-run"`
	// MoveLeader hands leadership to a healthy follower before this
	// member, when it leads, is defragmented.
	MoveLeader bool `koanf:"move-leader"`
	// AutoDisalarm disarms the NOSPACE alarm once every member is below
	// DisalarmThreshold of the quota.
	AutoDisalarm bool `koanf:"auto-disalarm"`
	// DisalarmThreshold is the fraction of the quota, in (0, 1], below
	// which every member must be before NOSPACE is disarmed.
	DisalarmThreshold float64 `koanf:"disalarm-threshold"`
	// Once runs one cycle and exits.
	Once bool `koanf:"once"`
	// Schedule says when cycles run: a cron expression (5 fields, or a
	// descriptor such as @hourly) or "@every <duration>"; see
	// [ParseSchedule].
	Schedule string `koanf:"schedule"`
	// Cooldown is the least time between two defragmentations of this
	// member; 0 disables it.
	Cooldown time.Duration `koanf:"cooldown"`
	// DefragTimeout bounds a defragmentation, until the member answers a
	// read again.
	DefragTimeout time.Duration `koanf:"defrag-timeout"`
	// MaxDefragDuration refuses a defragmentation whose forecast duration
	// (from this member's recorded defrags) exceeds it, so that etcd's
	// liveness probe does not kill the member mid-defrag; 0 disables the
	// guard. It must not exceed DefragTimeout.
	MaxDefragDuration time.Duration `koanf:"max-defrag-duration"`
	// DataDir is etcd's data directory as the agent sees it (mounted
	// read-only into a sidecar). When set, the agent measures the free space
	// of its filesystem before each defragmentation; "" disables the guard.
	DataDir string `koanf:"data-dir"`
	// DiskHeadroom is the share of the in-use size that must be free on
	// DataDir's filesystem on top of the in-use size itself, for etcd's
	// copy of the database (db.tmp) and what etcd writes meanwhile: in [0, 1].
	DiskHeadroom float64 `koanf:"disk-headroom"`
	// LockPrefix is the etcd key prefix of the agents' keys; Load makes it
	// end with "/".
	LockPrefix string `koanf:"lock-prefix"`
	// LockTTL is the TTL of the agent's session lease: whole seconds, at
	// least 5s.
	LockTTL time.Duration `koanf:"lock-ttl"`
	// LockTimeout bounds the wait for the lock.
	LockTimeout time.Duration `koanf:"lock-timeout"`
	// LeaderWaitTimeout bounds how long the leader's agent waits for
	// pending followers.
	LeaderWaitTimeout time.Duration `koanf:"leader-wait-timeout"`
	// AllowQuorumLoss allows a defrag when the other voting members cannot keep
	// quorum on their own: a one-member or two-member cluster, which stalls
	// while its member defragments.
	AllowQuorumLoss bool `koanf:"allow-quorum-loss"`
	// VerifyHashKV compares the member's HashKV with a peer's after a
	// defragmentation.
	VerifyHashKV bool `koanf:"verify-hashkv"`
	// Web configures the HTTP server.
	Web Web `koanf:"web"`
	// Log configures the logger.
	Log Log `koanf:"log"`

	// passwordFromFile is the content of PasswordFile, read by Load. It is
	// a pointer so that fmt prints an address, never the value, and it is
	// unexported so that JSON leaves it out.
	passwordFromFile *Secret
}

// Web configures the HTTP server of /metrics, /healthz, /readyz and /status.
type Web struct {
	// ListenAddress is the host:port to listen on; "" disables the HTTP
	// server.
	ListenAddress string `koanf:"listen-address"`
	// ConfigFile is an exporter-toolkit web configuration file that enables
	// TLS and basic authentication; "" serves plain HTTP.
	ConfigFile string `koanf:"config.file"`
}

// Log configures the logger.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
	// Format is text or json.
	Format string `koanf:"format"`
}

// Default returns the default configuration. It is valid: Load with no
// input returns it.
func Default() Config {
	return Config{
		Endpoints:             []string{"127.0.0.1:2379"},
		InsecureTransport:     true,
		DialTimeout:           2 * time.Second,
		CommandTimeout:        5 * time.Second,
		KeepaliveTime:         2 * time.Second,
		KeepaliveTimeout:      6 * time.Second,
		DefragRule:            rule.Default,
		EtcdStorageQuotaBytes: 2 * 1024 * 1024 * 1024,
		CompactionRetention:   10000,
		AutoDisalarm:          true,
		DisalarmThreshold:     0.9,
		Schedule:              "@every 1m",
		Cooldown:              time.Minute,
		DefragTimeout:         10 * time.Minute,
		DiskHeadroom:          0.2,
		LockPrefix:            "/etcd-defrag-agent/",
		LockTTL:               30 * time.Second,
		LockTimeout:           10 * time.Minute,
		LeaderWaitTimeout:     10 * time.Minute,
		VerifyHashKV:          true,
		Web:                   Web{ListenAddress: ":9479"},
		Log:                   Log{Level: "info", Format: "text"},
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

// Keys returns every configuration key, in the order of the Config fields.
// It is derived from the koanf tags, so it cannot drift from Config.
func Keys() []string {
	fs := fields()
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = f.key
	}
	return keys
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

// kind is how a key's value is decoded and checked.
type kind int

const (
	kindString kind = iota
	kindSecret
	kindStrings
	kindBool
	kindInt64
	kindFloat64
	kindDuration
)

// field describes one key of Config.
type field struct {
	key    string
	index  []int // for reflect.Value.FieldByIndex
	kind   kind
	redact bool // the value is secret: never put it in a message
}

// fields returns the keys of Config by reflection on its koanf tags.
func fields() []field {
	var out []field
	collectFields(reflect.TypeFor[Config](), "", nil, &out)
	return out
}

func collectFields(t reflect.Type, prefix string, index []int, out *[]field) {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("koanf")
		if !sf.IsExported() || tag == "" || tag == "-" {
			continue
		}
		idx := append(append([]int(nil), index...), i)
		key := prefix + tag
		if sf.Type.Kind() == reflect.Struct && sf.Type != reflect.TypeFor[time.Duration]() {
			collectFields(sf.Type, key+".", idx, out)
			continue
		}
		k := kindOf(sf.Type)
		*out = append(*out, field{key: key, index: idx, kind: k, redact: k == kindSecret || sf.Tag.Get("redact") == "true"})
	}
}

func kindOf(t reflect.Type) kind {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return kindDuration
	case t == reflect.TypeFor[Secret]():
		return kindSecret
	case t == reflect.TypeFor[[]string]():
		return kindStrings
	}
	switch t.Kind() {
	case reflect.String:
		return kindString
	case reflect.Bool:
		return kindBool
	case reflect.Int64:
		return kindInt64
	case reflect.Float64:
		return kindFloat64
	}
	// A new field of another type must be taught to the decoder; the
	// tests load every key, so this cannot go unnoticed.
	panic("config: unsupported field type " + t.String())
}

// fieldMap returns fields by key.
func fieldMap(fs []field) map[string]field {
	m := make(map[string]field, len(fs))
	for _, f := range fs {
		m[f.key] = f
	}
	return m
}

// get returns the value of f in c.
func (c *Config) get(f field) any {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index).Interface()
}

// set stores v, already of f's type or convertible to it, in c.
func (c *Config) set(f field, v any) {
	dst := reflect.ValueOf(c).Elem().FieldByIndex(f.index)
	dst.Set(reflect.ValueOf(v).Convert(dst.Type()))
}
