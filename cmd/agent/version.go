package main

import "runtime/debug"

// version is the agent's version. Release builds set it with
// -ldflags "-X main.version=v1.2.3"; otherwise it comes from the module's
// build information.
var version = ""

// resolveVersion returns the version: the -X value, else the main module's
// version, else the VCS revision, else "devel".
func resolveVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		return "devel-" + rev + dirty
	}
	return "devel"
}
