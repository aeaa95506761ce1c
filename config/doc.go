// Package config owns the agent's configuration: the typed [Config], its
// defaults, loading it from layered sources and checking it.
//
// # Layers
//
// [Load] merges four layers, each overriding the one before:
//
//  1. the defaults of [Default];
//  2. a YAML file, named by the --config flag or the ETCD_DEFRAG_CONFIG
//     variable (no file when neither is set);
//  3. environment variables ETCD_DEFRAG_<KEY>: the key upper-cased, with "-"
//     and "." turned into "_" (see [EnvVar]); lists are comma separated;
//  4. command-line flags that the user set, named like the keys.
//
// A key is one of [Keys]. In the file, "." nests: web.listen-address is
//
//	web:
//	  listen-address: ":9479"
//
// and web.config.file is web: {config: {file: ...}}.
//
// # Strictness
//
// Every input is decoded strictly: an unknown key in the file (nested ones
// included), an unknown ETCD_DEFRAG_ variable, a value of the wrong type (a
// string for a boolean, a bare number for a duration: durations always carry
// a unit, as in "30s"), an unreadable or malformed file and every value that
// [Config.Validate] rejects are all collected and returned together as one
// [*Error], which matches [ErrInvalid] with errors.Is. Each [Problem] names
// the key and the layer that set it: "flag --lock-ttl", "env
// ETCD_DEFRAG_COOLDOWN", "config file /etc/agent.yaml" or "default".
//
// # Decoding
//
// Each layer's values are decoded on their own, with koanf's unmarshal
// (mapstructure, strict, through one decode hook), so that a value of the
// wrong type is reported with its layer; then the layers are merged and
// decoded once into a [Config], whose embedded [agent.Config] is what package
// agent takes. The decode hook compiles defrag-rule into a [rule.Rule] and
// parses schedule into an [agent.Schedule], once: a bad rule fails at start,
// not at the first cycle, and package main uses both as they are.
//
// # Secrets
//
// The password is a [Secret]: formatting, JSON, text and slog output of a
// Secret, and so of a Config, show "<redacted>". Load moves a password given
// as --user name:password into Password and reads --password-file, so
// printing a loaded Config never shows a password; [Config.Credentials]
// returns the real values. Error messages never contain the value of user or
// password.
//
// The package has no package-level state: flags are defined in package main
// and handed to Load already parsed, together with the environment.
package config
