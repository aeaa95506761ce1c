package manifests

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// root is the repository's root, seen from this package's directory (where
// go test runs).
const root = "../.."

// sidecarName is the container name of the agent in every manifest.
const sidecarName = "etcd-defrag-agent"

// shutdownTimeout is cmd/agent's bound on the work after the agent stopped
// (leaving the queues, revoking the session, stopping the HTTP server).
const shutdownTimeout = 10 * time.Second

// agentBinary builds cmd/agent once per test binary, into a directory that
// TestMain removes.
var agentBinary = struct {
	once sync.Once
	dir  string
	path string
	err  error
}{}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "manifests-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBinary.dir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// buildAgent returns the path of the agent binary built from this checkout,
// the binary the manifests run.
func buildAgent(t *testing.T) string {
	t.Helper()
	agentBinary.once.Do(func() {
		start := time.Now()
		p := filepath.Join(agentBinary.dir, "etcd-defrag-agent")
		cmd := exec.Command("go", "build", "-o", p, "./cmd/agent")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			agentBinary.err = fmt.Errorf("go build ./cmd/agent: %w\n%s", err, out)
			return
		}
		agentBinary.path = p
		t.Logf("built the agent in %v", time.Since(start).Round(time.Millisecond))
	})
	if agentBinary.err != nil {
		t.Fatal(agentBinary.err)
	}
	return agentBinary.path
}

// checkConfig runs the agent binary with args plus --check-config and returns
// its exit code and output.
func checkConfig(t *testing.T, args []string) (code int, output string) {
	t.Helper()
	bin := buildAgent(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(append([]string{}, args...), "--check-config")...)
	// Only what the manifests set: no ETCD_DEFRAG_* of the developer's shell.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("run the agent: %v", err)
	}
	return 0, string(out)
}

// manifestFiles returns every .yaml, .yml and .json file under manifests/,
// relative to the repository root.
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(root, "manifests"), func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml", ".json":
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// readFile reads a file given relative to the repository root.
func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs splits a multi-document YAML stream, leaving out documents that
// hold only comments and blank lines.
func splitDocs(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSeparator.Split(string(b), -1) {
		empty := true
		for _, line := range strings.Split(d, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// object is a decoded manifest: its kind and name, and the typed value.
type object struct {
	Kind, Name string
	Value      any
}

// decodeStrict decodes one YAML document into the Kubernetes API type of its
// apiVersion and kind. Unknown and duplicate fields are errors, as are kinds
// the manifests are not expected to hold.
func decodeStrict(doc []byte) (object, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return object{}, err
	}
	var v any
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Pod":
		v = &corev1.Pod{}
	case "v1 Service":
		v = &corev1.Service{}
	case "v1 ConfigMap":
		v = &corev1.ConfigMap{}
	case "apps/v1 StatefulSet":
		v = &appsv1.StatefulSet{}
	case "policy/v1 PodDisruptionBudget":
		v = &policyv1.PodDisruptionBudget{}
	case "monitoring.coreos.com/v1 PodMonitor":
		v = &monitoringv1.PodMonitor{}
	case "monitoring.coreos.com/v1 PrometheusRule":
		v = &monitoringv1.PrometheusRule{}
	default:
		return object{}, fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
	if err := unmarshalStrict(doc, v); err != nil {
		return object{}, fmt.Errorf("%s %s: %w", tm.Kind, tm.Metadata.Name, err)
	}
	return object{Kind: tm.Kind, Name: tm.Metadata.Name, Value: v}, nil
}

// unmarshalStrict decodes YAML into v as the API server's strict field
// validation does: duplicate keys, and keys that match no field exactly
// (case-sensitively, unlike encoding/json), are errors.
func unmarshalStrict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// decodeAll decodes every document of a stream strictly.
func decodeAll(t *testing.T, what string, b []byte) []object {
	t.Helper()
	var objs []object
	for i, doc := range splitDocs(b) {
		o, err := decodeStrict(doc)
		if err != nil {
			t.Errorf("%s, document %d: %v", what, i+1, err)
			continue
		}
		objs = append(objs, o)
	}
	return objs
}

// find returns the one object of kind and name among objs.
func find[T any](t *testing.T, objs []object, kind, name string) *T {
	t.Helper()
	var found *T
	for _, o := range objs {
		if o.Kind == kind && (name == "" || o.Name == name) {
			if found != nil {
				t.Fatalf("more than one %s %q", kind, name)
			}
			v, ok := o.Value.(*T)
			if !ok {
				t.Fatalf("%s %q decoded as %T", kind, name, o.Value)
			}
			found = v
		}
	}
	if found == nil {
		t.Fatalf("no %s %q", kind, name)
	}
	return found
}

// kustomizeCommand returns the command that renders a kustomization
// offline: `kubectl kustomize`, which users run (kubectl apply -k), or else
// the kustomize CLI (`kustomize build`), which .ci/run installs with go install
// when kubectl is missing.
func kustomizeCommand(t *testing.T) []string {
	t.Helper()
	if p, err := exec.LookPath("kubectl"); err == nil {
		return []string{p, "kustomize"}
	}
	if p, err := exec.LookPath("kustomize"); err == nil {
		return []string{p, "build"}
	}
	t.Fatal("rendering the kustomizations needs kubectl (kubectl kustomize) or kustomize v5: " +
		"go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0")
	return nil
}

// kustomize renders the kustomization in dir (relative to the repository
// root, or absolute).
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(root, filepath.FromSlash(dir))
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	kc := kustomizeCommand(t)
	cmd := exec.CommandContext(ctx, kc[0], append(kc[1:], dir)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", strings.Join(kc, " "), dir, err, stderr.String())
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Errorf("%s %s warns:\n%s", strings.Join(kc, " "), dir, s)
	}
	return stdout.Bytes()
}

// patchWithKustomize applies a strategic merge patch to the object of kind and
// name in resources, as `kubectl patch` would: a throwaway kustomization that
// names its target, so the patch's own metadata does not matter.
func patchWithKustomize(t *testing.T, resources, patch []byte, kind, name string) []byte {
	t.Helper()
	dir := t.TempDir()
	k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [resources.yaml]\n"+
		"patches:\n- path: patch.yaml\n  target: {kind: %s, name: %s}\n", kind, name)
	for f, b := range map[string][]byte{"kustomization.yaml": []byte(k), "resources.yaml": resources, "patch.yaml": patch} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return kustomize(t, dir)
}

// testPKI writes a CA certificate and a client certificate and key signed by
// it into dir, as --check-config wants them: existing, PEM, parseable.
func testPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "manifests test CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "etcd-defrag-agent"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.crt", "CERTIFICATE", caDER), write("client.crt", "CERTIFICATE", der), write("client.key", "PRIVATE KEY", keyDER)
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// httpGet returns the status code and body of url, or an error.
func httpGet(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String(), err
}
