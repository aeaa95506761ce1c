package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/diskstat"
	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/steer"
)

// The bounds of --growth-window: a rate over less than a minute follows
// bbolt's growth steps rather than the load; a week-old sample says nothing
// about today's.
const (
	minGrowthWindow = time.Minute
	maxGrowthWindow = 7 * 24 * time.Hour
)

// minCommandTimeout is the shortest request bound: a request of the cluster
// client must fit two attempts, so that it can go to a second member when
// the first one defragments (or is down) and gives no answer.
const minCommandTimeout = 2 * steer.MinAttempt

// minLockTTL is the shortest session lease: etcd's own minimum lease TTL is
// a few seconds, and a shorter one expires on a hiccup.
const minLockTTL = 5 * time.Second

// Validate checks every value, and how they go together, and returns a
// [*Error] with all the problems, or nil. It reads the files the
// configuration names (TLS files, the password file, the web configuration)
// to check that they are readable. The rule and the schedule were checked
// when they were compiled and parsed (by [Load], [Default] or the caller).
// Its problems have no Source; [Load] adds it.
func (c Config) Validate() error {
	var ps problems
	bad := func(key, format string, args ...any) { ps.add(key, "", format, args...) }

	if len(c.Endpoints) == 0 {
		bad("endpoints", "no endpoint (want this member's client URL, such as https://127.0.0.1:2379)")
	}
	for _, ep := range c.Endpoints {
		if err := checkEndpoint(ep); err != nil {
			bad("endpoints", "%v", err)
		}
	}

	for _, f := range []struct{ key, path string }{
		{"cacert", c.CACert}, {"cert", c.Cert}, {"key", c.Key}, {"password-file", c.PasswordFile},
	} {
		if f.path == "" {
			continue
		}
		if err := checkReadable(f.path); err != nil {
			bad(f.key, "%v", err)
		}
	}
	switch {
	case c.Cert != "" && c.Key == "":
		bad("cert", "set without key (cert and key go together)")
	case c.Key != "" && c.Cert == "":
		bad("key", "set without cert (cert and key go together)")
	}

	name, _, userHasPassword := strings.Cut(c.User, ":")
	switch {
	case c.User != "" && name == "":
		bad("user", "empty user name (want name or name:password)")
	case userHasPassword && c.Password != "":
		bad("password", "password given twice: user has the form name:password and password is set too")
	case userHasPassword && c.PasswordFile != "":
		bad("password-file", "password given twice: user has the form name:password and password-file is set too")
	case c.Password != "" && c.PasswordFile != "":
		bad("password-file", "password given twice: both password and password-file are set")
	case c.User == "" && c.Password != "":
		bad("password", "set without user")
	case c.User == "" && c.PasswordFile != "":
		bad("password-file", "set without user")
	}

	for _, d := range []struct {
		key string
		d   time.Duration
	}{
		{"dial-timeout", c.DialTimeout},
		{"command-timeout", c.CommandTimeout},
		{"keepalive-time", c.KeepaliveTime},
		{"keepalive-timeout", c.KeepaliveTimeout},
		{"defrag-timeout", c.DefragTimeout},
		{"lock-timeout", c.LockTimeout},
		{"leader-wait-timeout", c.LeaderWaitTimeout},
	} {
		if d.d <= 0 {
			bad(d.key, "must be positive, got %v", d.d)
		}
	}
	if c.CommandTimeout > 0 && c.CommandTimeout < minCommandTimeout {
		bad("command-timeout", "%v is too short: at least %v, so that a request can go to another member while one defragments (each attempt waits at least %v)",
			c.CommandTimeout, minCommandTimeout, steer.MinAttempt)
	}
	switch {
	case c.MaxDefragDuration < 0:
		bad("max-defrag-duration", "must not be negative, got %v (0 disables the guard)", c.MaxDefragDuration)
	case c.DefragTimeout > 0 && c.MaxDefragDuration > c.DefragTimeout:
		bad("max-defrag-duration", "%v is longer than defrag-timeout %v: the agent stops waiting for a defragmentation after defrag-timeout", c.MaxDefragDuration, c.DefragTimeout)
	}
	if c.DataDir != "" {
		if err := checkDir(c.DataDir); err != nil {
			bad("data-dir", "%v", err)
		}
	}
	if !(c.DiskHeadroom >= 0 && c.DiskHeadroom <= 1) {
		bad("disk-headroom", "must be in [0, 1], got %v (a fraction of the in-use size)", c.DiskHeadroom)
	}
	if c.GrowthWindow < minGrowthWindow || c.GrowthWindow > maxGrowthWindow {
		bad("growth-window", "must be between %v and %v, got %v (the span the growth rates are measured over)", minGrowthWindow, maxGrowthWindow, c.GrowthWindow)
	}
	if c.Cooldown < 0 {
		bad("cooldown", "must not be negative, got %v (0 disables the cooldown)", c.Cooldown)
	}
	switch {
	case c.LockTTL%time.Second != 0:
		bad("lock-ttl", "must be a whole number of seconds, got %v (it becomes an etcd lease TTL)", c.LockTTL)
	case c.LockTTL < minLockTTL:
		bad("lock-ttl", "must be at least %v, got %v", minLockTTL, c.LockTTL)
	case c.LockTTL/time.Second > math.MaxInt32:
		bad("lock-ttl", "too large, got %v", c.LockTTL)
	}

	if c.Rule == nil {
		bad("defrag-rule", "rule is empty")
	}
	if c.QuotaBytes <= 0 {
		bad("etcd-storage-quota-bytes", "must be positive, got %d", c.QuotaBytes)
	}
	if c.CompactionRetention < 1 {
		bad("compaction-retention", "must be at least 1, got %d (the agent never compacts to the newest revision)", c.CompactionRetention)
	}
	if !(c.DisalarmThreshold > 0 && c.DisalarmThreshold <= 1) {
		bad("disalarm-threshold", "must be in (0, 1], got %v", c.DisalarmThreshold)
	}
	if s := c.Schedule; s.Every < 0 || (s.Every > 0) == (s.Cron != "") {
		bad("schedule", "want exactly one of a positive interval and a cron expression")
	}
	if c.LockPrefix == "" {
		bad("lock-prefix", "must not be empty")
	}

	if c.Web.ListenAddress != "" {
		if err := checkHostPort(c.Web.ListenAddress, true, 0); err != nil {
			bad("web.listen-address", "invalid address %q: %v (want host:port or :port; empty disables the HTTP server)", c.Web.ListenAddress, err)
		}
	}
	if c.Web.ConfigFile != "" {
		if err := checkReadable(c.Web.ConfigFile); err != nil {
			bad("web.config.file", "%v", err)
		} else if err := web.Validate(c.Web.ConfigFile); err != nil {
			bad("web.config.file", "invalid web configuration %s: %v", c.Web.ConfigFile, err)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "unknown level %q (want debug, info, warn or error)", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "unknown format %q (want text or json)", c.Log.Format)
	}
	return sortByKey(ps).err()
}

// checkEndpoint accepts what the etcd client accepts as an endpoint and this
// agent can use: host:port, http(s)://host:port and unix(s)://path.
func checkEndpoint(ep string) error {
	if ep == "" {
		return errors.New("empty endpoint")
	}
	if !strings.Contains(ep, "://") {
		if err := checkHostPort(ep, false, 1); err != nil {
			return fmt.Errorf("invalid endpoint %q: %w (want host:port, http(s)://host:port or unix://path)", ep, err)
		}
		return nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("invalid endpoint %q: %w", ep, err)
	}
	if u.User != nil {
		// Never echo it: the user information may hold a password.
		return fmt.Errorf("invalid endpoint %q: user information is not allowed in an endpoint (use user and password)", u.Redacted())
	}
	switch u.Scheme {
	case "http", "https":
		if err := checkHostPort(u.Host, false, 1); err != nil {
			return fmt.Errorf("invalid endpoint %q: %w", ep, err)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("invalid endpoint %q: must not have a path, query or fragment", ep)
		}
	case "unix", "unixs":
		if u.Host+u.Path == "" {
			return fmt.Errorf("invalid endpoint %q: no socket path", ep)
		}
	default:
		return fmt.Errorf("invalid endpoint %q: unsupported scheme %q (want http, https, unix or unixs)", ep, u.Scheme)
	}
	return nil
}

// checkHostPort checks a host:port with a numeric port of at least minPort;
// emptyHost allows ":port".
func checkHostPort(s string, emptyHost bool, minPort int) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if host == "" && !emptyHost {
		return errors.New("missing host")
	}
	for _, r := range host {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:%", r)
		if !ok {
			return fmt.Errorf("invalid host %q", host)
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < minPort || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// checkReadable checks that path is a regular file (or a symbolic link to
// one, as in a Kubernetes Secret volume) this process can open. It refuses
// devices and FIFOs before opening them: opening a FIFO blocks, and reading
// /dev/zero never ends.
func checkReadable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", path, pathErr(err))
	}
	if st.IsDir() {
		return fmt.Errorf("cannot read %s: is a directory", path)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("cannot read %s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot read %s: %w", path, pathErr(err))
	}
	return f.Close()
}

// checkDir checks that path is a directory whose filesystem this process can
// measure (statfs), as the free-disk guard does before each defragmentation.
func checkDir(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cannot use %s: %w", path, pathErr(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("cannot use %s: not a directory (want etcd's data directory)", path)
	}
	if _, err := diskstat.Free(path); err != nil {
		return fmt.Errorf("cannot use %s: %w", path, err)
	}
	return nil
}

// pathErr returns the reason of a *fs.PathError without the repeated path.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
