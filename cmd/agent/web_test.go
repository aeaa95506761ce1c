package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcdtest"
)

// TestWebConfigTLSAndBasicAuth runs the daemon with --web.config.file
// enabling TLS and basic auth (the exporter-toolkit format Prometheus
// exporters use) and talks to it with real clients: TLS with the right
// credentials gets /metrics, no or wrong credentials get 401 on every
// endpoint, a client that does not trust the certificate fails the
// handshake, and plain HTTP gets no metrics.
func TestWebConfigTLSAndBasicAuth(t *testing.T) {
	const user, password = "prometheus", "s3cret-scrape"
	c := etcdtest.New(t, etcdtest.Options{UnsafeNoFsync: true})
	m := c.Members()[0]

	dir := t.TempDir()
	certPEM, keyPEM := selfSignedCert(t)
	certFile := writeFile(t, dir, "web.crt", string(certPEM))
	keyFile := writeFile(t, dir, "web.key", string(keyPEM))
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := writeFile(t, dir, "web.yml", "tls_server_config:\n"+
		"  cert_file: "+certFile+"\n"+
		"  key_file: "+keyFile+"\n"+
		"basic_auth_users:\n"+
		"  "+user+": "+string(hash)+"\n")

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		err := run(ctx, []string{"--endpoints", m.ClientURL, "--lock-prefix", prefix,
			"--web.listen-address", addr, "--web.config.file", webConfig,
			"--schedule", "@every 1h", "--defrag-rule", "false"}, nil, io.Discard, &stderr)
		done <- exitCode(err, &stderr)
	}()

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("cannot add the test certificate to a pool")
	}
	trusting := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	defer trusting.CloseIdleConnections()
	base := "https://" + addr

	// Wait until the server answers over TLS.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _, err := request(trusting, base+"/healthz", user, password)
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 200 on /healthz over TLS within 30s (last: %d, %v); stderr:\n%s", code, err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	cases := []struct {
		name, path, user, password string
		want                       int
		body                       string // part of the body, for 200
	}{
		{"metrics without credentials", "/metrics", "", "", http.StatusUnauthorized, ""},
		{"metrics wrong password", "/metrics", user, "wrong", http.StatusUnauthorized, ""},
		{"metrics unknown user", "/metrics", "admin", password, http.StatusUnauthorized, ""},
		{"metrics right credentials", "/metrics", user, password, http.StatusOK, "etcd_defrag_agent_build_info{"},
		{"healthz without credentials", "/healthz", "", "", http.StatusUnauthorized, ""},
		{"status without credentials", "/status", "", "", http.StatusUnauthorized, ""},
		{"status right credentials", "/status", user, password, http.StatusOK, `"member_id"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := request(trusting, base+tc.path, tc.user, tc.password)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.path, err)
			}
			if code != tc.want {
				t.Errorf("GET %s as %q = %d, want %d", tc.path, tc.user, code, tc.want)
			}
			if tc.want != http.StatusOK && strings.Contains(body, "etcd_defrag_agent_") {
				t.Errorf("GET %s as %q answered %d with metrics in the body", tc.path, tc.user, code)
			}
			if !strings.Contains(body, tc.body) {
				t.Errorf("GET %s body does not contain %q:\n%.300s", tc.path, tc.body, body)
			}
		})
	}

	t.Run("client not trusting the certificate", func(t *testing.T) {
		untrusting := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12},
		}}
		defer untrusting.CloseIdleConnections()
		_, _, err := request(untrusting, base+"/metrics", user, password)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("GET /metrics with an empty trust store: err = %v, want an unknown authority error", err)
		}
	})

	t.Run("plain http", func(t *testing.T) {
		plain := &http.Client{Timeout: 10 * time.Second}
		defer plain.CloseIdleConnections()
		code, body, err := request(plain, "http://"+addr+"/metrics", user, password)
		if err == nil && (code == http.StatusOK || strings.Contains(body, "etcd_defrag_agent_")) {
			t.Errorf("GET /metrics over plain HTTP = %d with metrics, want a failure", code)
		}
		t.Logf("plain HTTP: code %d, err %v", code, err)
	})

	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit code after SIGTERM %d; stderr:\n%s", code, stderr.String())
	}
}

// request GETs url with basic auth when user is set, and returns the status
// code and the body.
func request(c *http.Client, url, user, password string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// selfSignedCert returns a PEM certificate for 127.0.0.1 and localhost,
// valid for an hour, and its PEM private key.
func selfSignedCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "etcd-defrag-agent web test"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}
