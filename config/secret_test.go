package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretFormatting(t *testing.T) {
	s := Secret("hunter2")
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"String", s.String(), "<redacted>"},
		{"GoString", s.GoString(), `config.Secret("<redacted>")`},
		{"%v", fmt.Sprintf("%v", s), "<redacted>"},
		{"%s", fmt.Sprintf("%s", s), "<redacted>"},
		{"%q", fmt.Sprintf("%q", s), `"<redacted>"`},
		{"%+v", fmt.Sprintf("%+v", s), "<redacted>"},
		{"%#v", fmt.Sprintf("%#v", s), `config.Secret("<redacted>")`},
		{"%x", fmt.Sprintf("%x", s), "<redacted>"},
		{"%d", fmt.Sprintf("%d", s), "<redacted>"},
		{"%10s", fmt.Sprintf("%10s", s), "<redacted>"},
		{"Sprint", fmt.Sprint(s), "<redacted>"},
		{"empty", Secret("").String(), ""},
		{"empty %q", fmt.Sprintf("%q", Secret("")), `""`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
	b, err := json.Marshal(s)
	var decoded string
	if err == nil {
		err = json.Unmarshal(b, &decoded)
	}
	if err != nil || decoded != "<redacted>" {
		t.Errorf("json.Marshal(secret) = %s, %v, want the JSON string <redacted>", b, err)
	}
	text, err := s.MarshalText()
	if err != nil || string(text) != "<redacted>" {
		t.Errorf("MarshalText() = %s, %v, want <redacted>", text, err)
	}
}

// TestSecretsNeverPrinted loads a password from each place it can come from
// and prints the Config every way a program might.
func TestSecretsNeverPrinted(t *testing.T) {
	const pw = "hunter2-s3cr3t"
	pwFile := writeFile(t, "password", pw+"\n")
	tests := []struct {
		name string
		env  []string
		args []string
	}{
		{name: "user flag", args: []string{"--user", "root:" + pw}},
		{name: "user env", env: []string{"ETCD_DEFRAG_USER=root:" + pw}},
		{name: "password flag", args: []string{"--user", "root", "--password", pw}},
		{name: "password env", env: []string{"ETCD_DEFRAG_USER=root", "ETCD_DEFRAG_PASSWORD=" + pw}},
		{name: "password file", args: []string{"--user", "root", "--password-file", pwFile}},
		{name: "password in config file", env: []string{"ETCD_DEFRAG_CONFIG=" + writeFile(t, "agent.yml", "user: root\npassword: "+pw+"\n")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(Sources{Flags: testFlags(t, tc.args...), Environ: tc.env})
			if err != nil {
				t.Fatalf("Load() error: %v", err)
			}
			if user, password := cfg.Credentials(); user != "root" || password != pw {
				t.Errorf("Credentials() = %q, %q, want %q, %q", user, password, "root", pw)
			}
			if cfg.User != "root" {
				t.Errorf("User = %q, want the name only", cfg.User)
			}
			var out bytes.Buffer
			fmt.Fprintf(&out, "%v %+v %#v", cfg, cfg, cfg)
			fmt.Fprintf(&out, "%v %+v %#v", &cfg, &cfg, &cfg)
			b, err := json.Marshal(cfg)
			if err != nil {
				t.Fatalf("json.Marshal(cfg) error: %v", err)
			}
			out.Write(b)
			slog.New(slog.NewTextHandler(&out, nil)).Info("config", "config", cfg, "password", cfg.Password)
			slog.New(slog.NewJSONHandler(&out, nil)).Info("config", "config", cfg, "password", cfg.Password)
			if strings.Contains(out.String(), pw) {
				t.Errorf("the password shows in printed output:\n%s", out.String())
			}
		})
	}
}

// TestSecretsNeverInErrors checks that rejecting a user or a password does
// not echo it.
func TestSecretsNeverInErrors(t *testing.T) {
	const pw = "hunter2-s3cr3t"
	tests := []struct {
		name string
		file string // content of the configuration file, if any
		env  []string
	}{
		{name: "password without user", env: []string{"ETCD_DEFRAG_PASSWORD=" + pw}},
		{name: "empty user name", env: []string{"ETCD_DEFRAG_USER=:" + pw}},
		{name: "password twice", env: []string{"ETCD_DEFRAG_USER=root:" + pw, "ETCD_DEFRAG_PASSWORD=" + pw}},
		{name: "password of the wrong type", file: "user: root\npassword: [" + pw + "]\n"},
		{name: "user of the wrong type", file: "user: {root: " + pw + "}\n"},
		{name: "numeric password", file: "user: root\npassword: 1234567890123\n"},
		{name: "password in malformed YAML", file: "user: root\npassword: \"" + pw + "\n  - x: ["},
		{name: "file is only the password", file: pw + "\n"},
		{name: "password in endpoint", env: []string{"ETCD_DEFRAG_ENDPOINTS=https://root:" + pw + "@127.0.0.1:2379"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := tc.env
			if tc.file != "" {
				env = append(env, "ETCD_DEFRAG_CONFIG="+writeFile(t, "agent.yml", tc.file))
			}
			_, err := Load(Sources{Environ: env})
			if err == nil {
				t.Fatalf("Load(env %q) = nil error, want one", env)
			}
			for _, leak := range []string{pw, "1234567890123"} {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("Load() error shows the secret %q:\n%v", leak, err)
				}
			}
		})
	}
}
