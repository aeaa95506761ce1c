//go:build e2e && linux

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/internal/etcddata"
)

// f10Timeout bounds one invocation of the agent in TestF10BadInputs: a bad
// input is reported before any request, an unreachable member after the
// dial and command timeouts the case sets.
const f10Timeout = 30 * time.Second

// f10Case is one bad invocation of the agent binary.
type f10Case struct {
	name string
	args []string // added to the base invocation (a later flag wins)
	env  []string // ETCD_DEFRAG_* variables
	drop []string // flags of the base invocation left out (so that env or a file can set them)
	want string   // a part of the output that names the bad input
}

// TestF10BadInputs runs the agent binary, as a separate process, with more
// than 30 bad invocations (flags, environment, configuration file, rule,
// certificates, an unreachable or wrongly certified member) next to a real
// running cluster. Each must exit 2 with a message naming the bad input, and
// none may write anything to etcd: judged from etcd, no key under the lock
// prefix, no lease, the same revision, and no defrag in any member's log.
//
// Every invocation is a valid one that would defragment (--once,
// --defrag-rule=true, --cooldown=0, the member's endpoint) plus one bad
// input; at the end the valid invocation itself runs and must defragment
// its member and write its record, so "nothing written" is not vacuous. A
// TLS-terminating proxy in front of a member stands for a member with a
// certificate: with the CA that signed the proxy's certificate the agent
// reaches etcd through it (a dry run, which writes nothing), with another CA
// it must exit 2 naming --endpoints.
func TestF10BadInputs(t *testing.T) {
	forFaultLines(t, func(t *testing.T, line string) {
		c := NewCluster(t, ClusterOptions{Line: line})
		obs := c.Observer()
		ctx := within(t, 3*time.Minute)
		if _, err := c.Fill(ctx, etcddata.FillOptions{Keys: 500, ValueSize: 1 << 10, NoCompact: true}); err != nil {
			t.Fatal(err)
		}
		lead, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := others(c.Members(), lead)[0] // a follower: its agent needs no leader's wait
		before := etcdState(ctx, t, c)
		n := len(obs.Defrags())

		dir := t.TempDir()
		pki := newF10PKI(t, dir)
		proxy := tlsProxy(t, pki.serverCert, strings.TrimPrefix(m.ClientURL, "http://"))
		closed, err := freePort() // nothing listens there
		if err != nil {
			t.Fatal(err)
		}
		file := func(name, content string) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		garbage := file("garbage.pem", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
		notPEM := file("not-pem.txt", "not a certificate\n")
		unknownKey := file("unknown-key.yml", "defrag-rulez: true\n")
		malformed := file("malformed.yml", "endpoints: [\n")
		wrongType := file("wrong-type.yml", "cooldown: [1m]\n")
		bareDuration := file("bare-duration.yml", "lock-ttl: 30\n")
		nestedBad := file("nested.yml", "log:\n  level: verbose\n")
		badRuleFile := file("bad-rule.yml", "defrag-rule: dbSize >\n")
		badWeb := file("web.yml", "tls_server_config:\n  cert_file: "+filepath.Join(dir, "nope.crt")+"\n")
		missing := filepath.Join(dir, "nope")
		secret := file("password", "secret\n")
		https := "https://" + proxy
		// --endpoints is a list: a second --endpoints adds to the first.
		ep := []string{"endpoints"}

		cases := []f10Case{
			// Flags.
			{name: "unknown flag", args: []string{"--defrag-rulez=true"}, want: "unknown flag: --defrag-rulez"},
			{name: "positional argument", args: []string{"defrag"}, want: `unexpected argument "defrag"`},
			{name: "flag without value", args: []string{"--cooldown"}, want: "--cooldown"},
			{name: "duration without unit", args: []string{"--defrag-timeout=30"}, want: "--defrag-timeout"},
			{name: "duration not a duration", args: []string{"--cooldown=ten"}, want: "--cooldown"},
			{name: "negative cooldown", args: []string{"--cooldown=-1m"}, want: "--cooldown"},
			{name: "zero command timeout", args: []string{"--command-timeout=0s"}, want: "--command-timeout"},
			{name: "lock ttl below 5s", args: []string{"--lock-ttl=2s"}, want: "--lock-ttl"},
			{name: "lock ttl not whole seconds", args: []string{"--lock-ttl=5500ms"}, want: "--lock-ttl"},
			{name: "disalarm threshold above 1", args: []string{"--disalarm-threshold=1.5"}, want: "--disalarm-threshold"},
			{name: "disalarm threshold 0", args: []string{"--disalarm-threshold=0"}, want: "--disalarm-threshold"},
			{name: "quota 0", args: []string{"--etcd-storage-quota-bytes=0"}, want: "--etcd-storage-quota-bytes"},
			{name: "compaction retention 0", args: []string{"--compaction-retention=0"}, want: "--compaction-retention"},
			{name: "bool not a bool", args: []string{"--dry-run=maybe"}, want: "--dry-run"},
			{name: "cron not a cron", args: []string{"--schedule=every minute"}, want: "--schedule"},
			{name: "cron minute 61", args: []string{"--schedule=61 * * * *"}, want: "--schedule"},
			{name: "every 0s", args: []string{"--schedule=@every 0s"}, want: "--schedule"},
			{name: "empty lock prefix", args: []string{"--lock-prefix="}, want: "--lock-prefix"},
			{name: "data dir missing", args: []string{"--data-dir=" + missing}, want: "--data-dir"},
			{name: "data dir a file", args: []string{"--data-dir=" + secret}, want: "--data-dir"},
			{name: "disk headroom absurd", args: []string{"--disk-headroom=50"}, want: "--disk-headroom"},
			{name: "disk headroom negative", args: []string{"--disk-headroom=-0.1"}, want: "--disk-headroom"},
			{name: "unknown time zone", args: []string{"--timezone=Mars/Olympus"}, want: "--timezone"},
			{name: "growth window absurd", args: []string{"--growth-window=9999h"}, want: "--growth-window"},
			{name: "command timeout too short to steer", args: []string{"--command-timeout=300ms"}, want: "--command-timeout"},
			{name: "max defrag duration negative", args: []string{"--max-defrag-duration=-1s"}, want: "--max-defrag-duration"},
			{name: "max defrag duration beyond the defrag timeout", args: []string{"--max-defrag-duration=2h"}, want: "--max-defrag-duration"},
			{name: "endpoint without port", args: []string{"--endpoints=localhost"}, drop: ep, want: "--endpoints"},
			{name: "endpoint scheme", args: []string{"--endpoints=ftp://127.0.0.1:2379"}, drop: ep, want: "--endpoints"},
			{name: "no endpoint", args: []string{"--endpoints="}, drop: ep, want: "--endpoints"},
			{name: "log level", args: []string{"--log.level=verbose"}, want: "--log.level"},
			{name: "log format", args: []string{"--log.format=xml"}, want: "--log.format"},
			{name: "listen address", args: []string{"--web.listen-address=nohostport"}, want: "--web.listen-address"},
			{name: "web config missing", args: []string{"--web.config.file=" + missing}, want: "--web.config.file"},
			{name: "web config names a missing certificate", args: []string{"--web.config.file=" + badWeb}, want: "--web.config.file"},
			// The rule.
			{name: "rule syntax", args: []string{"--defrag-rule=dbSize >"}, want: "--defrag-rule"},
			{name: "rule unknown variable", args: []string{"--defrag-rule=dbsize > 1"}, want: "dbsize"},
			{name: "rule not boolean", args: []string{"--defrag-rule=dbSize + 1"}, want: "--defrag-rule"},
			{name: "rule empty", args: []string{"--defrag-rule="}, want: "--defrag-rule"},
			{name: "rule clock function", args: []string{"--defrag-rule=now().Year() > 2000"}, want: "--defrag-rule"},
			// The environment.
			{name: "env unknown variable", env: []string{"ETCD_DEFRAG_COOLDOWNN=1m"}, want: "ETCD_DEFRAG_COOLDOWNN"},
			{name: "env not a bool", env: []string{"ETCD_DEFRAG_DRY_RUN=maybe"}, want: "ETCD_DEFRAG_DRY_RUN"},
			{name: "env duration without unit", env: []string{"ETCD_DEFRAG_LOCK_TTL=30"}, drop: []string{"lock-ttl"}, want: "ETCD_DEFRAG_LOCK_TTL"},
			{name: "env bad rule", env: []string{"ETCD_DEFRAG_DEFRAG_RULE=dbSize >"}, drop: []string{"defrag-rule"}, want: "ETCD_DEFRAG_DEFRAG_RULE"},
			{name: "env bad endpoint", env: []string{"ETCD_DEFRAG_ENDPOINTS=ftp://127.0.0.1:2379"}, drop: []string{"endpoints"}, want: "ETCD_DEFRAG_ENDPOINTS"},
			{name: "env config file missing", env: []string{"ETCD_DEFRAG_CONFIG=" + missing}, want: missing},
			// The configuration file.
			{name: "config file missing", args: []string{"--config=" + missing}, want: missing},
			{name: "config file is a directory", args: []string{"--config=" + dir}, want: dir},
			{name: "config unknown key", args: []string{"--config=" + unknownKey}, want: "defrag-rulez"},
			{name: "config malformed", args: []string{"--config=" + malformed}, want: malformed},
			{name: "config wrong type", args: []string{"--config=" + wrongType}, want: "cooldown"},
			{name: "config duration without unit", args: []string{"--config=" + bareDuration}, drop: []string{"lock-ttl"}, want: "lock-ttl"},
			{name: "config nested bad value", args: []string{"--config=" + nestedBad}, drop: []string{"log.level"}, want: "log.level"},
			{name: "config bad rule", args: []string{"--config=" + badRuleFile}, drop: []string{"defrag-rule"}, want: "defrag-rule"},
			// Credentials and certificates.
			{name: "password twice", args: []string{"--user=root:y"}, env: []string{"ETCD_DEFRAG_PASSWORD=x"}, want: "password"},
			{name: "password file missing", args: []string{"--user=root", "--password-file=" + missing}, want: "--password-file"},
			{name: "password without user", args: []string{"--password-file=" + secret}, want: "--password-file"},
			{name: "cacert missing", args: []string{"--cacert=" + missing}, want: "--cacert"},
			{name: "cacert not PEM", args: []string{"--cacert=" + notPEM}, want: "--cacert"},
			{name: "cacert garbage PEM", args: []string{"--cacert=" + garbage}, want: "--cacert"},
			{name: "cert without key", args: []string{"--cert=" + pki.clientCert}, want: "--cert"},
			{name: "key without cert", args: []string{"--key=" + pki.clientKey}, want: "--key"},
			{name: "cert and key garbage", args: []string{"--cert=" + garbage, "--key=" + garbage}, want: "--cert"},
			{name: "cert and key do not match", args: []string{"--cert=" + pki.clientCert, "--key=" + pki.otherKey}, want: "--cert"},
			// Members that cannot be reached: with --once no later cycle retries.
			{name: "unreachable endpoint", args: []string{fmt.Sprintf("--endpoints=127.0.0.1:%d", closed), "--dial-timeout=500ms", "--command-timeout=1s"},
				drop: ep, want: fmt.Sprintf("--endpoints 127.0.0.1:%d", closed)},
			{name: "wrong CA", args: []string{"--endpoints=" + https, "--cacert=" + pki.otherCA, "--dial-timeout=1s", "--command-timeout=2s"},
				drop: ep, want: "--endpoints " + https},
			{name: "TLS without a CA", args: []string{"--endpoints=" + https, "--dial-timeout=1s", "--command-timeout=2s"},
				drop: ep, want: "--endpoints " + https},
		}

		base := []string{
			"--once", "--endpoints=" + m.ClientURL, "--lock-prefix=" + c.LockPrefix, "--web.listen-address=",
			"--defrag-rule=true", "--cooldown=0s", "--lock-ttl=5s", "--leader-wait-timeout=10s",
			"--log.format=json", "--log.level=info",
		}
		start := time.Now()
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				args := withoutFlags(base, tc.drop)
				args = append(args, tc.args...)
				code, out := runAgentBinary(t, c, args, tc.env)
				t.Logf("exit %d: %s", code, lastLine(out))
				if code != 2 {
					t.Errorf("%s: exit code %d, want 2; output:\n%s", invocation(args, tc.env), code, out)
				}
				if !strings.Contains(out, tc.want) {
					t.Errorf("%s: the output does not name the input (%q):\n%s", invocation(args, tc.env), tc.want, out)
				}
			})
		}
		Record(t, c, "f10_bad_invocations", float64(len(cases)), "invocations")
		Record(t, c, "f10_bad_invocations_seconds", time.Since(start).Seconds(), "s")

		// Judged from etcd: nothing written, nothing defragmented.
		after := etcdState(ctx, t, c)
		if after != before {
			t.Errorf("the bad invocations changed etcd: before %+v, after %+v", before, after)
		}
		if ds := obs.DefragsSince(n); len(ds) > 0 {
			t.Errorf("the bad invocations defragmented: %v", ds)
		}

		// The controls. Through the proxy with the right CA (a dry run,
		// which writes nothing): the wrong-CA case failed because of the CA.
		tlsOK := withoutFlags(base, ep)
		tlsOK = append(tlsOK, "--endpoints="+https, "--cacert="+pki.ca, "--dry-run")
		if code, out := runAgentBinary(t, c, tlsOK, nil); code != 0 {
			t.Errorf("control %s: exit code %d, want 0 (a dry run through the TLS proxy); output:\n%s", invocation(tlsOK, nil), code, out)
		}
		if st := etcdState(ctx, t, c); st != before {
			t.Errorf("the dry run changed etcd: before %+v, after %+v", before, st)
		}
		// The base invocation itself defragments the member and records it:
		// every bad invocation above was one bad input away from that.
		if code, out := runAgentBinary(t, c, base, nil); code != 0 {
			t.Fatalf("control %s: exit code %d, want 0; output:\n%s", invocation(base, nil), code, out)
		}
		ds, err := obs.WaitDefrags(ctx, n+1)
		if err != nil {
			t.Fatal(err)
		}
		if ds = ds[n:]; len(ds) != 1 || ds[0].Member != m.Name {
			t.Errorf("the control defragmented %v, want one defrag of %s", ds, m.Name)
		}
		if st := etcdState(ctx, t, c); st.LockKeys == 0 || st.Revision == before.Revision {
			t.Errorf("the control wrote nothing (before %+v, after %+v): the check of the bad invocations proves nothing", before, st)
		}
	})
}

// etcdWrites is what an agent's writes would change in etcd.
type etcdWrites struct {
	Revision int64 // the store's revision
	LockKeys int64 // keys under the agents' lock prefix
	Leases   int   // leases granted (sessions)
}

// etcdState reads etcdWrites through the cluster's client. It fails the
// test on error.
func etcdState(ctx context.Context, t testing.TB, c *Cluster) etcdWrites {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	cli := c.Client()
	resp, err := cli.Get(ctx, c.LockPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return etcdWrites{Revision: resp.Header.Revision, LockKeys: resp.Count, Leases: len(leases.Leases)}
}

// withoutFlags returns args without the flags named in drop (--name=value
// form).
func withoutFlags(args, drop []string) []string {
	var out []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !slices.Contains(drop, name) {
			out = append(out, a)
		}
	}
	return out
}

// lastLine returns the last non-empty line of out: the agent's error.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// invocation formats a command line for messages.
func invocation(args, env []string) string {
	s := "etcd-defrag-agent " + strings.Join(args, " ")
	if len(env) > 0 {
		s = strings.Join(env, " ") + " " + s
	}
	return s
}

// runAgentBinary runs the agent binary Main built with args and env (ETCD*
// variables of the test's own environment removed), bounded by f10Timeout,
// and returns its exit code and its output (stdout and stderr). The process
// carries the cluster's marker, so the orphan scan covers it.
func runAgentBinary(t testing.TB, c *Cluster, args, env []string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), f10Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, AgentBinary(t), args...)
	cmd.Env = cleanEnv(c.owner+"f10", env)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case ctx.Err() != nil:
		t.Fatalf("%s: no exit within %v; output:\n%s", invocation(args, env), f10Timeout, out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	default:
		t.Fatalf("%s: %v", invocation(args, env), err)
	}
	return 0, ""
}

// f10PKI is the certificates of TestF10BadInputs, as PEM files.
type f10PKI struct {
	ca, otherCA           string // two unrelated CA certificates
	serverCert            tls.Certificate
	clientCert, clientKey string // a client certificate of ca and its key
	otherKey              string // a key that matches no certificate
}

// newF10PKI writes the certificates into dir.
func newF10PKI(t testing.TB, dir string) f10PKI {
	t.Helper()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, der
	}
	serial := int64(0)
	issue := func(tmpl, parent *x509.Certificate, pub, signer any) []byte {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	caTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	var p f10PKI
	caKey, _ := newKey()
	ca := caTmpl("e2e CA")
	caDER := issue(ca, nil, &caKey.PublicKey, caKey)
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p.ca = write("ca.crt", "CERTIFICATE", caDER)
	otherKey, otherKeyDER := newKey()
	p.otherCA = write("other-ca.crt", "CERTIFICATE", issue(caTmpl("another CA"), nil, &otherKey.PublicKey, otherKey))
	p.otherKey = write("other.key", "EC PRIVATE KEY", otherKeyDER)

	srvKey, srvKeyDER := newKey()
	srvDER := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "etcd"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, caCert, &srvKey.PublicKey, caKey)
	p.serverCert, err = tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: srvKeyDER}))
	if err != nil {
		t.Fatal(err)
	}
	cliKey, cliKeyDER := newKey()
	p.clientCert = write("client.crt", "CERTIFICATE", issue(&x509.Certificate{Subject: pkix.Name{CommonName: "root"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, caCert, &cliKey.PublicKey, caKey))
	p.clientKey = write("client.key", "EC PRIVATE KEY", cliKeyDER)
	return p
}

// tlsProxy listens on a loopback port with TLS (the certificate cert, ALPN
// h2 as gRPC requires) and forwards every connection, decrypted, to the
// plaintext address to. It returns its host:port; it stops at t's cleanup.
func tlsProxy(t testing.TB, cert tls.Certificate, to string) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, cs...)
	}
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return // closed
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				_ = in.Close()
				continue
			}
			track(in, out)
			for _, p := range [][2]net.Conn{{in, out}, {out, in}} {
				wg.Go(func() {
					_, _ = io.Copy(p[0], p[1])
					_ = p[0].Close()
					_ = p[1].Close()
				})
			}
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}
