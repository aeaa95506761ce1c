package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// Command-line-only flags: they are not keys, so neither the file nor the
// environment can set them (ETCD_DEFRAG_CONFIG excepted, which names the
// file).
const (
	FlagConfig      = "config"
	FlagCheckConfig = "check-config"
	FlagVersion     = "version"
	FlagHelp        = "help"
)

// Sources are the inputs of [Load] besides the defaults.
type Sources struct {
	// Flags is the parsed command line, or nil. Only the flags the user
	// set (pflag's Changed) override; the defaults shown in its help text
	// do not matter. Its flags are the keys plus the command-line-only
	// FlagConfig, FlagCheckConfig, FlagVersion and FlagHelp.
	Flags *pflag.FlagSet
	// Environ is the environment in the form of os.Environ, or nil.
	Environ []string
}

// Load returns the configuration merged from, lowest first, [Default], the
// YAML file (the --config flag, else ETCD_DEFRAG_CONFIG; none if neither),
// the ETCD_DEFRAG_ environment variables and the flags the user set, and
// checked with [Config.Validate].
//
// On any problem it returns the zero Config and a [*Error] holding every
// problem of every layer, each naming the layer that set the value.
//
// On success the returned Config is normalised: LockPrefix ends with "/",
// a password given as User "name:password" is moved into Password, and the
// password file has been read; [Config.Credentials] returns the result.
func Load(src Sources) (Config, error) {
	l := newLoader()
	l.merge(l.defaults(), sourceDefault)

	env := environ(src.Environ)
	if path, ok := l.configPath(src.Flags, env); ok {
		l.loadFile(path)
	}
	l.loadEnv(env)
	l.loadFlags(src.Flags)

	cfg := l.decode()
	var verr *Error
	if err := cfg.Validate(); errors.As(err, &verr) {
		for _, p := range verr.Problems {
			if l.bad[p.Key] {
				// The input for this key was already rejected; the value
				// validated is a lower layer's and would only confuse.
				continue
			}
			p.Source = l.origin[p.Key]
			l.problems = append(l.problems, p)
		}
	}
	if len(l.problems) > 0 {
		return Config{}, l.problems.err()
	}

	if name, pw, ok := strings.Cut(cfg.User, ":"); ok {
		cfg.User, cfg.Password = name, Secret(pw)
	}
	if cfg.PasswordFile != "" {
		pw, err := readPasswordFile(cfg.PasswordFile)
		if err != nil {
			l.problems.add("password-file", l.origin["password-file"], "%v", err)
			return Config{}, l.problems.err()
		}
		cfg.passwordFromFile = &pw
	}
	if !strings.HasSuffix(cfg.LockPrefix, "/") {
		cfg.LockPrefix += "/"
	}
	return cfg, nil
}

// loader merges the layers into one koanf instance and remembers which
// layer set each key.
type loader struct {
	fields   []field
	byKey    map[string]field
	ko       *koanf.Koanf
	origin   map[string]string // key -> source of its current value
	bad      map[string]bool   // keys whose input was rejected
	problems problems
}

func newLoader() *loader {
	fs := fields()
	return &loader{
		fields: fs,
		byKey:  fieldMap(fs),
		ko:     koanf.New("."),
		origin: make(map[string]string),
		bad:    make(map[string]bool),
	}
}

// defaults returns Default as a flat key -> value map.
func (l *loader) defaults() map[string]any {
	def := Default()
	m := make(map[string]any, len(l.fields))
	for _, f := range l.fields {
		m[f.key] = def.get(f)
	}
	return m
}

// merge puts a layer's decoded values, a flat key -> value map, over the
// layers before it.
func (l *loader) merge(layer map[string]any, source string) {
	if len(layer) == 0 {
		return
	}
	// confmap only unflattens and copies a map that is already decoded: it
	// cannot fail.
	_ = l.ko.Load(confmap.Provider(layer, "."), nil)
	for key := range layer {
		l.origin[key] = source
	}
}

// decode returns the merged configuration. Every key has a value of its
// field's type: the defaults set them all and each layer is decoded before
// it is merged.
func (l *loader) decode() Config {
	var c Config
	for _, f := range l.fields {
		if v := l.ko.Get(f.key); v != nil {
			c.set(f, v)
		}
	}
	return c
}

// reject records a problem with the input of key from source.
func (l *loader) reject(key, source, format string, args ...any) {
	l.problems.add(key, source, format, args...)
	if key != "" {
		l.bad[key] = true
	}
}

// configPath returns the configuration file named by the --config flag or,
// when the flag was not set, by ETCD_DEFRAG_CONFIG.
func (l *loader) configPath(flags *pflag.FlagSet, env map[string]string) (string, bool) {
	if flags != nil {
		if f := flags.Lookup(FlagConfig); f != nil && f.Changed {
			return f.Value.String(), f.Value.String() != ""
		}
	}
	path := env[envConfig]
	return path, path != ""
}

// loadFile decodes the YAML file at path and merges it.
func (l *loader) loadFile(path string) {
	source := sourceFilePrefix + path
	b, err := file.Provider(path).ReadBytes()
	if err != nil {
		l.reject("", source, "cannot read: %v", pathErr(err))
		return
	}
	raw, err := yaml.Parser().Unmarshal(b)
	if err != nil {
		l.reject("", source, "invalid YAML: %s", yamlMessage(err))
		return
	}
	flat := make(map[string]any)
	l.flatten(raw, "", flat, source)

	layer := make(map[string]any)
	reported := make(map[string]bool)
	for _, key := range slices.Sorted(maps.Keys(flat)) {
		v := flat[key]
		if f, ok := l.byKey[key]; ok {
			if val, msg := decodeTyped(f, v); msg != "" {
				l.reject(key, source, "%s", msg)
			} else {
				layer[key] = val
			}
			continue
		}
		if section := l.section(key); section != nil {
			if !isEmpty(v) {
				l.reject(key, source, "expected a mapping with keys %s, got %s", strings.Join(section, ", "), describe(v, false))
			}
			continue
		}
		if leaf, ok := l.leafPrefix(key); ok {
			// leaf: {a: 1} flattens to leaf.a.
			if !reported[leaf] {
				reported[leaf] = true
				l.reject(leaf, source, "expected %s, got a mapping", kindNoun(l.byKey[leaf].kind))
			}
			continue
		}
		l.reject("", source, "key %q: unknown key%s", key, didYouMean(key, Keys(), normaliseKey))
	}
	l.merge(layer, source)
}

// flatten turns the nested maps of a YAML document into "."-joined keys.
// Empty maps stay as values, so that an empty section can be told apart.
func (l *loader) flatten(m map[string]any, prefix string, out map[string]any, source string) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		key := prefix + k
		var sub map[string]any
		switch v := m[k].(type) {
		case map[string]any:
			sub = v
		case map[any]any:
			sub = make(map[string]any, len(v))
			for kk, vv := range v {
				sub[fmt.Sprint(kk)] = vv
			}
		}
		if len(sub) > 0 {
			l.flatten(sub, key+".", out, source)
			continue
		}
		if _, dup := out[key]; dup {
			// web.listen-address and web: {listen-address} at once.
			l.reject(key, source, "given twice")
			continue
		}
		out[key] = m[k]
	}
}

// section returns the keys under key when key is a section such as "web",
// or nil.
func (l *loader) section(key string) []string {
	var sub []string
	for _, f := range l.fields {
		if rest, ok := strings.CutPrefix(f.key, key+"."); ok {
			sub = append(sub, rest)
		}
	}
	return sub
}

// leafPrefix returns the key that is a proper prefix of key, as lock-ttl is
// of lock-ttl.a.
func (l *loader) leafPrefix(key string) (string, bool) {
	for _, f := range l.fields {
		if strings.HasPrefix(key, f.key+".") {
			return f.key, true
		}
	}
	return "", false
}

// environ returns the ETCD_DEFRAG_ variables of environ; the first of a
// repeated name wins, as for os.Getenv.
func environ(environ []string) map[string]string {
	env := make(map[string]string)
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix) {
			continue
		}
		if _, seen := env[name]; !seen {
			env[name] = value
		}
	}
	return env
}

// loadEnv decodes the ETCD_DEFRAG_ variables and merges them.
func (l *loader) loadEnv(env map[string]string) {
	byVar := make(map[string]field, len(l.fields))
	names := make([]string, 0, len(l.fields))
	for _, f := range l.fields {
		byVar[EnvVar(f.key)] = f
		names = append(names, EnvVar(f.key))
	}
	for _, name := range slices.Sorted(maps.Keys(env)) {
		source := sourceEnvPrefix + name
		if name == envConfig || isServiceLink(name) {
			continue
		}
		f, ok := byVar[name]
		if !ok {
			l.reject("", source, "unknown variable%s", didYouMean(name, names, strings.ToUpper))
			continue
		}
		val, msg := decodeText(f, env[name])
		if msg != "" {
			l.reject(f.key, source, "%s", msg)
			continue
		}
		l.merge(map[string]any{f.key: val}, source)
	}
}

// isServiceLink reports whether name is one of the variables Kubernetes
// injects for a Service named etcd-defrag (ETCD_DEFRAG_SERVICE_HOST,
// ETCD_DEFRAG_PORT_9479_TCP, ...). They are not configuration, and failing
// on them would stop the sidecar because of an unrelated Service.
func isServiceLink(name string) bool {
	rest := strings.TrimPrefix(name, envPrefix)
	if rest == "SERVICE_HOST" || rest == "SERVICE_PORT" || strings.HasPrefix(rest, "SERVICE_PORT_") || rest == "PORT" {
		return true
	}
	// PORT_<n>_<proto>[_PROTO|_PORT|_ADDR]
	parts := strings.Split(rest, "_")
	if len(parts) < 3 || len(parts) > 4 || parts[0] != "PORT" {
		return false
	}
	if _, err := strconv.ParseUint(parts[1], 10, 16); err != nil {
		return false
	}
	if parts[2] != "TCP" && parts[2] != "UDP" && parts[2] != "SCTP" {
		return false
	}
	return len(parts) == 3 || parts[3] == "PROTO" || parts[3] == "PORT" || parts[3] == "ADDR"
}

// loadFlags decodes the flags the user set and merges them.
func (l *loader) loadFlags(flags *pflag.FlagSet) {
	if flags == nil {
		return
	}
	flags.Visit(func(pf *pflag.Flag) {
		switch pf.Name {
		case FlagConfig, FlagCheckConfig, FlagVersion, FlagHelp:
			return
		}
		source := sourceFlagPrefix + pf.Name
		f, ok := l.byKey[pf.Name]
		if !ok {
			l.reject("", source, "not a configuration key")
			return
		}
		val, msg := decodeTyped(f, posflag.FlagVal(flags, pf))
		if msg != "" {
			l.reject(f.key, source, "%s", msg)
			return
		}
		l.merge(map[string]any{f.key: val}, source)
	})
}

// readPasswordFile returns the content of path without its trailing newline.
func readPasswordFile(path string) (Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", path, pathErr(err))
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("password file %s is empty", path)
	}
	return Secret(pw), nil
}

// decodeTyped decodes a value that already has a Go type: from YAML
// (string, bool, int, uint64, float64, []any, time.Time, nil, maps) or from a
// pflag getter. It returns the value in f's type, or a message.
func decodeTyped(f field, v any) (any, string) {
	if v == nil {
		return nil, "has no value (remove the key to use the default)"
	}
	switch f.kind {
	case kindString, kindSecret:
		if s, ok := v.(string); ok {
			return s, ""
		}
		hint := ""
		if isScalar(v) {
			hint = " (quote it)"
		}
		return nil, fmt.Sprintf("expected a string, got %s%s", describe(v, f.redact), hint)
	case kindStrings:
		switch x := v.(type) {
		case string:
			return splitList(x), ""
		case []string:
			return slices.Clone(x), ""
		case []any:
			out := make([]string, 0, len(x))
			for _, e := range x {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Sprintf("expected a list of strings, got a list containing %s", describe(e, f.redact))
				}
				out = append(out, s)
			}
			return out, ""
		}
		return nil, fmt.Sprintf("expected a list of strings, got %s", describe(v, f.redact))
	case kindBool:
		if b, ok := v.(bool); ok {
			return b, ""
		}
		return nil, fmt.Sprintf("expected true or false, got %s", describe(v, f.redact))
	case kindInt64:
		if n, ok := toInt64(v); ok {
			return n, ""
		}
		return nil, fmt.Sprintf("expected an integer, got %s", describe(v, f.redact))
	case kindFloat64:
		if x, ok := toFloat64(v); ok {
			return x, ""
		}
		return nil, fmt.Sprintf("expected a number, got %s", describe(v, f.redact))
	case kindDuration:
		switch x := v.(type) {
		case time.Duration:
			return x, ""
		case string:
			return parseDuration(x)
		}
		if _, ok := toFloat64(v); ok {
			return nil, fmt.Sprintf("invalid duration %v: a duration needs a unit, such as \"%vs\"", v, v)
		}
		return nil, fmt.Sprintf("expected a duration such as \"30s\", got %s", describe(v, f.redact))
	}
	return nil, "unsupported key type"
}

// decodeText decodes a value given as text, from an environment variable.
func decodeText(f field, s string) (any, string) {
	switch f.kind {
	case kindString, kindSecret:
		return s, ""
	case kindStrings:
		return splitList(s), ""
	case kindBool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Sprintf("invalid boolean %q (want true or false)", s)
		}
		return b, ""
	case kindInt64:
		n, err := strconv.ParseInt(s, 10, 64)
		if errors.Is(err, strconv.ErrRange) {
			return nil, fmt.Sprintf("invalid integer %q: out of range", s)
		}
		if err != nil {
			return nil, fmt.Sprintf("invalid integer %q", s)
		}
		return n, ""
	case kindFloat64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Sprintf("invalid number %q", s)
		}
		return x, ""
	case kindDuration:
		return parseDuration(s)
	}
	return nil, "unsupported key type"
}

// parseDuration parses a Go duration and refuses a bare number.
func parseDuration(s string) (any, string) {
	d, err := time.ParseDuration(s)
	if err == nil {
		return d, ""
	}
	if _, ferr := strconv.ParseFloat(s, 64); ferr == nil {
		return nil, fmt.Sprintf("invalid duration %q: a duration needs a unit, such as \"%ss\"", s, s)
	}
	return nil, fmt.Sprintf("invalid duration %q (want a number with a unit, such as 30s, 10m or 1h30m)", s)
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
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x), true
		}
	case float64:
		// 2e9 in YAML is a float; accept it when it is a whole number.
		if x == math.Trunc(x) && x >= math.MinInt64 && x < math.MaxInt64 {
			return int64(x), true
		}
	}
	return 0, false
}

func toFloat64(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case int32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

func isScalar(v any) bool {
	switch v.(type) {
	case bool, int, int32, int64, uint64, float32, float64, time.Time:
		return true
	}
	return false
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(x) == 0
	case map[any]any:
		return len(x) == 0
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
	case int, int32, int64, uint64:
		typ, val = "integer", fmt.Sprint(x)
	case float32, float64:
		typ, val = "number", fmt.Sprint(x)
	case time.Time:
		typ, val = "timestamp", x.Format(time.RFC3339)
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
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

// kindNoun names what a key of kind k expects.
func kindNoun(k kind) string {
	switch k {
	case kindStrings:
		return "a list of strings"
	case kindBool:
		return "true or false"
	case kindInt64:
		return "an integer"
	case kindFloat64:
		return "a number"
	case kindDuration:
		return "a duration"
	default:
		return "a string"
	}
}

// yamlMessage returns the YAML parser's message without its "yaml: "
// prefix and without the values it quotes in backquotes, which could be a
// password.
func yamlMessage(err error) string {
	msg := strings.ReplaceAll(err.Error(), "yaml: ", "")
	msg = strings.ReplaceAll(msg, "into map[string]interface {}", "(the file must be a mapping of keys to values)")
	msg = strings.ReplaceAll(msg, "into map[string]any", "(the file must be a mapping of keys to values)")
	var b strings.Builder
	for {
		i := strings.IndexByte(msg, '`')
		if i < 0 {
			break
		}
		j := strings.IndexByte(msg[i+1:], '`')
		if j < 0 {
			break
		}
		b.WriteString(msg[:i])
		b.WriteString("(value)")
		msg = msg[i+1+j+1:]
	}
	b.WriteString(msg)
	return strings.Join(strings.Fields(b.String()), " ")
}

// normaliseKey maps the usual misspellings of a key (lock_ttl, Lock-TTL) to
// the key.
func normaliseKey(s string) string {
	return strings.ReplaceAll(strings.ToLower(s), "_", "-")
}

// didYouMean returns ` (did you mean "X"?)` for the candidate closest to
// name, or "": the same after normalise, the same last part (listen-address
// for web.listen-address), or at most two edits away.
func didYouMean(name string, candidates []string, normalise func(string) string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if normalise(name) == normalise(c) {
			return fmt.Sprintf(" (did you mean %q?)", c)
		}
		if i := strings.LastIndexByte(c, '.'); i >= 0 && c[i+1:] == name {
			best, bestDist = c, 0
		}
		if d := editDistance(normalise(name), normalise(c)); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
