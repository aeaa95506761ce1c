package manifests

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// TestEveryManifestDecodesStrictly: every document of every YAML file under
// manifests/ decodes into its Kubernetes API type with unknown fields
// rejected; the other files are the kinds the tests below check. A new file
// must be one of them.
func TestEveryManifestDecodesStrictly(t *testing.T) {
	files := manifestFiles(t)
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			switch base := path.Base(f); {
			case base == "kustomization.yaml":
				// Rendered by TestKustomizations, whose output decodes here too.
			case base == "agent.yaml":
				// The agent's configuration file: TestSidecarConfiguration
				// loads it with the agent.
			case strings.HasPrefix(base, "helm-values"):
				checkKamajiValues(t, f)
			case base == "grafana-dashboard.json":
				// TestGrafanaDashboard.
			case base == "prometheusrule.test.yaml":
				// promtool's unit tests of the alerts: TestPromtoolRules.
			case strings.HasSuffix(f, ".json"):
				t.Fatalf("unexpected JSON file")
			default:
				objs := decodeAll(t, f, readFile(t, f))
				if len(objs) == 0 {
					t.Fatalf("no Kubernetes objects")
				}
				for _, o := range objs {
					checkNames(t, f, o)
				}
			}
		})
	}
}

// TestKustomizations: every kustomization renders offline, and what it
// renders decodes strictly.
func TestKustomizations(t *testing.T) {
	var dirs []string
	for _, f := range manifestFiles(t) {
		if path.Base(f) == "kustomization.yaml" {
			dirs = append(dirs, path.Dir(f))
		}
	}
	if len(dirs) < 3 {
		t.Fatalf("kustomizations %v: want the StatefulSet base, kamaji-etcd and monitoring", dirs)
	}
	for _, d := range dirs {
		t.Run(d, func(t *testing.T) {
			objs := decodeAll(t, "kubectl kustomize "+d, kustomize(t, d))
			if len(objs) == 0 {
				t.Fatal("renders nothing")
			}
			for _, o := range objs {
				checkNames(t, d, o)
			}
		})
	}
}

// checkNames checks label keys and values and port names with Kubernetes'
// own validation, which decoding does not do.
func checkNames(t *testing.T, what string, o object) {
	t.Helper()
	check := func(where string, errs []string) {
		for _, e := range errs {
			t.Errorf("%s: %s %s: %s: %s", what, o.Kind, o.Name, where, e)
		}
	}
	checkLabels := func(where string, ls map[string]string) {
		for k, v := range ls {
			check(where+" label key "+k, validation.IsQualifiedName(k))
			check(where+" label value "+v, validation.IsValidLabelValue(v))
		}
	}
	if m, ok := o.Value.(metav1.Object); ok {
		checkLabels("metadata", m.GetLabels())
	}
	var spec *corev1.PodSpec
	switch v := o.Value.(type) {
	case *corev1.Pod:
		spec = &v.Spec
	case *appsv1.StatefulSet:
		checkLabels("template", v.Spec.Template.Labels)
		spec = &v.Spec.Template.Spec
	case *corev1.Service:
		for _, p := range v.Spec.Ports {
			check("port", validation.IsValidPortName(p.Name))
		}
	}
	if spec == nil {
		return
	}
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			check("container "+c.Name+" port", validation.IsValidPortName(p.Name))
		}
	}
}

// checkKamajiValues decodes the documented values for kamaji-etcd's chart
// strictly: the keys must be the chart's (values.yaml of chart 0.14.0), the
// probe a Kubernetes probe, and the quota the agent's.
func checkKamajiValues(t *testing.T, f string) {
	t.Helper()
	var values struct {
		QuotaBackendBytes string        `json:"quotaBackendBytes"`
		ExtraArgs         []string      `json:"extraArgs"`
		LivenessProbe     *corev1.Probe `json:"livenessProbe"`
	}
	if err := unmarshalStrict(readFile(t, f), &values); err != nil {
		t.Fatalf("%s: %v", f, err)
	}
	// The flag for a defragmenting member's gRPC health is spelled
	// differently per etcd line (3.7 refuses 3.5's, 3.5 refuses 3.6's): it
	// lives only in the per-line files, which hold nothing else. make
	// kube-e2e starts every line's etcd with each file's arguments.
	if line, ok := strings.CutPrefix(path.Base(f), "helm-values-etcd-"); ok {
		want := map[string]string{
			"3.5.yaml": "--experimental-stop-grpc-service-on-defrag=true",
			"3.6.yaml": "--feature-gates=StopGRPCServiceOnDefrag=true",
		}[line]
		if want == "" {
			t.Fatalf("%s: unexpected etcd line", f)
		}
		if len(values.ExtraArgs) != 1 || values.ExtraArgs[0] != want || values.QuotaBackendBytes != "" || values.LivenessProbe != nil {
			t.Errorf("%s: want only extraArgs [%s]", f, want)
		}
		return
	}
	if len(values.ExtraArgs) > 0 {
		t.Errorf("%s: extraArgs %v belong in helm-values-etcd-<line>.yaml (etcd's flags differ per line)", f, values.ExtraArgs)
	}
	cfg := map[string]any{}
	if err := yaml.Unmarshal(readFile(t, path.Join(path.Dir(f), "agent.yaml")), &cfg); err != nil {
		t.Fatal(err)
	}
	if got, _ := configValue(cfg, "etcd-storage-quota-bytes"); got != values.QuotaBackendBytes {
		t.Errorf("agent.yaml has etcd-storage-quota-bytes %s, the chart's quotaBackendBytes is %s", got, values.QuotaBackendBytes)
	}
	if values.LivenessProbe == nil || values.LivenessProbe.HTTPGet == nil {
		t.Errorf("%s: livenessProbe replaces the chart's whole probe and needs its httpGet", f)
	}
}

// TestNoStrayFiles: manifests/ holds manifests and their testdata only (their
// tests are here, in the harness's module).
func TestNoStrayFiles(t *testing.T) {
	err := filepath.WalkDir(filepath.Join(root, "manifests"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Ext(p) {
		case ".yaml", ".json":
		default:
			t.Errorf("unexpected file %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
