package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
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
// checked with [Config.Validate]. The rule is compiled and the schedule
// parsed here, once.
//
// On any problem it returns the zero Config and a [*Error] holding every
// problem of every layer, each naming the layer that set the value.
//
// On success the returned Config is normalised: LockPrefix ends with "/",
// a password given as User "name:password" is moved into Password, and the
// password file has been read; [Config.Credentials] returns the result.
func Load(src Sources) (Config, error) {
	l := &loader{ko: koanf.New("."), origin: make(map[string]string), bad: make(map[string]bool)}
	env := environ(src.Environ)
	if path, ok := configPath(src.Flags, env); ok {
		l.loadFile(path)
	}
	l.loadEnv(env)
	l.loadFlags(src.Flags)

	// Each layer's values have the right types; what is left to find is
	// in the merged values: the rule, the schedule and Validate's checks.
	cfg := Default()
	var values problems
	for key, msg := range problemsOf(unmarshal(l.ko, &cfg, true)) {
		values.add(key, "", "%s", msg)
	}
	var verr *Error
	if errors.As(cfg.Validate(), &verr) {
		values = append(values, verr.Problems...)
	}
	for _, p := range sortByKey(values) {
		if l.bad[p.Key] {
			// The input for this key was already rejected; the value
			// checked is a lower layer's and would only confuse.
			continue
		}
		p.Source = l.origin[p.Key]
		if p.Source == "" {
			p.Source = sourceDefault
		}
		l.problems = append(l.problems, p)
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

// loader merges the layers' values into one koanf instance and remembers
// which layer set each key.
type loader struct {
	ko       *koanf.Koanf
	origin   map[string]string // key -> source of its current value
	bad      map[string]bool   // keys whose input was rejected
	problems problems
}

// input is one value of a layer, or the problem that rejected it before it
// was decoded (then key is "" when the input names no key).
type input struct {
	key, source string
	value       any
	problem     string
}

// take decodes the values of one layer on their own, so that each error
// names its input, and merges those that decode. Problems are reported in
// the order of ins.
func (l *loader) take(ins []input) {
	layer := koanf.New(".")
	for _, in := range ins {
		if in.problem == "" {
			_ = layer.Set(in.key, in.value) // cannot fail without StrictMerge
		}
	}
	var scratch Config
	decodeErrs := problemsOf(unmarshal(layer, &scratch, false))
	for _, in := range ins {
		if in.problem == "" {
			in.problem = decodeErrs[in.key]
		}
		if in.problem != "" {
			l.problems.add(in.key, in.source, "%s", in.problem)
			if in.key != "" {
				l.bad[in.key] = true
			}
			continue
		}
		_ = l.ko.Set(in.key, in.value)
		l.origin[in.key] = in.source
	}
}

// configPath returns the configuration file named by the --config flag or,
// when the flag was not set, by ETCD_DEFRAG_CONFIG.
func configPath(flags *pflag.FlagSet, env map[string]string) (string, bool) {
	if flags != nil {
		if f := flags.Lookup(FlagConfig); f != nil && f.Changed {
			return f.Value.String(), f.Value.String() != ""
		}
	}
	path := env[envConfig]
	return path, path != ""
}

// loadFile reads the YAML file at path and takes its keys.
func (l *loader) loadFile(path string) {
	source := sourceFilePrefix + path
	b, err := file.Provider(path).ReadBytes()
	if err != nil {
		l.problems.add("", source, "cannot read: %v", pathErr(err))
		return
	}
	raw, err := yaml.Parser().Unmarshal(b)
	if err != nil {
		l.problems.add("", source, "invalid YAML: %s", yamlMessage(err))
		return
	}
	flat := make(map[string]any)
	var ins []input
	flatten(raw, "", flat, func(key string) {
		// web.listen-address and web: {listen-address} at once.
		ins = append(ins, input{key: key, source: source, problem: "given twice"})
	})
	for _, key := range slices.Sorted(maps.Keys(flat)) {
		in := input{key: key, source: source, value: flat[key]}
		switch section := under(key); {
		case slices.Contains(Keys(), key):
			if in.value == nil {
				in.problem = "has no value (remove the key to use the default)"
			}
		case section != nil:
			if m, _ := asMap(in.value); in.value == nil || m != nil && len(m) == 0 {
				continue // an empty section
			}
			in.problem = fmt.Sprintf("expected a mapping with keys %s, got %s", strings.Join(section, ", "), describe(in.value, false))
		default:
			in.key, in.problem = "", fmt.Sprintf("key %q: unknown key%s", key, didYouMean(key, Keys(), normaliseKey))
		}
		ins = append(ins, in)
	}
	l.take(ins)
}

// flatten turns the nested maps of a YAML document into "."-joined keys. It
// stops at a key, whose value cannot be a mapping, and keeps empty maps, so
// that an empty section can be told apart.
func flatten(m map[string]any, prefix string, out map[string]any, twice func(key string)) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		key, v := prefix+k, m[k]
		if sub, ok := asMap(v); ok && len(sub) > 0 {
			if !slices.Contains(Keys(), key) {
				flatten(sub, key+".", out, twice)
				continue
			}
			v = mapping{} // where a key's value belongs
		}
		if _, dup := out[key]; dup {
			twice(key)
			continue
		}
		out[key] = v
	}
}

// asMap returns v as a map with string keys when it is a YAML mapping.
func asMap(v any) (map[string]any, bool) {
	switch x := v.(type) {
	case map[string]any:
		return x, true
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = e
		}
		return m, true
	}
	return nil, false
}

// under returns the keys under section ("listen-address" and "config.file"
// under "web"), or nil when section is not one.
func under(section string) []string {
	var sub []string
	for _, key := range Keys() {
		if rest, ok := strings.CutPrefix(key, section+"."); ok {
			sub = append(sub, rest)
		}
	}
	return sub
}

// environ returns the ETCD_DEFRAG_ variables of environ; the first of a
// repeated name wins, as for os.Getenv.
func environ(environ []string) map[string]string {
	env := make(map[string]string)
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if _, seen := env[name]; ok && !seen && strings.HasPrefix(name, envPrefix) {
			env[name] = value
		}
	}
	return env
}

// loadEnv takes the ETCD_DEFRAG_ variables, in the order of their names.
func (l *loader) loadEnv(env map[string]string) {
	var names []string
	keyOf := make(map[string]string)
	for _, key := range Keys() {
		names = append(names, EnvVar(key))
		keyOf[EnvVar(key)] = key
	}
	var ins []input
	for _, name := range slices.Sorted(maps.Keys(env)) {
		if name == envConfig || isServiceLink(name) {
			continue
		}
		in := input{key: keyOf[name], source: sourceEnvPrefix + name, value: envText(env[name])}
		if in.key == "" {
			in.problem = "unknown variable" + didYouMean(name, names, strings.ToUpper)
		}
		ins = append(ins, in)
	}
	l.take(ins)
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

// loadFlags takes the flags the user set, in the order of their names.
func (l *loader) loadFlags(flags *pflag.FlagSet) {
	if flags == nil {
		return
	}
	var ins []input
	flags.Visit(func(pf *pflag.Flag) {
		switch pf.Name {
		case FlagConfig, FlagCheckConfig, FlagVersion, FlagHelp:
			return
		}
		in := input{key: pf.Name, source: sourceFlagPrefix + pf.Name, value: posflag.FlagVal(flags, pf)}
		if !slices.Contains(Keys(), pf.Name) {
			in.key, in.problem = "", "not a configuration key"
		}
		ins = append(ins, in)
	})
	l.take(ins)
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

// yamlMessage returns the YAML parser's message without its "yaml: "
// prefix and without the values it quotes in backquotes, which could be a
// password.
func yamlMessage(err error) string {
	msg := strings.ReplaceAll(err.Error(), "yaml: ", "")
	msg = strings.ReplaceAll(msg, "into map[string]interface {}", "(the file must be a mapping of keys to values)")
	msg = strings.ReplaceAll(msg, "into map[string]any", "(the file must be a mapping of keys to values)")
	msg = regexp.MustCompile("`[^`]*`").ReplaceAllString(msg, "(value)")
	return strings.Join(strings.Fields(msg), " ")
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
