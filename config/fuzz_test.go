package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadYAML feeds arbitrary bytes to Load as the configuration file.
// Load must not panic; it either rejects the file with a *Error whose
// problems all say something, or returns a configuration that Validate
// accepts. The seeds are in testdata/fuzz/FuzzLoadYAML.
func FuzzLoadYAML(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "agent.yml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(Sources{Environ: []string{"ETCD_DEFRAG_CONFIG=" + path}})
		if err != nil {
			var cerr *Error
			if !errors.As(err, &cerr) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load() error %v (%T) is not a *Error matching ErrInvalid", err, err)
			}
			if len(cerr.Problems) == 0 {
				t.Fatalf("Load() returned a *Error without problems")
			}
			for _, p := range cerr.Problems {
				if p.Message == "" || p.Source == "" {
					t.Errorf("Load() problem %+v lacks a message or a source", p)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load() accepted %q, but Validate() of the result = %v", data, err)
		}
	})
}
