package manifests

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// deploying returns the README's "Deploying" section and its fenced code
// blocks (fences may be indented, inside list items).
func deploying(t *testing.T) (section string, blocks []string) {
	t.Helper()
	readme := string(readFile(t, "README.md"))
	start := strings.Index(readme, "\n## Deploying\n")
	if start < 0 {
		t.Fatal("README has no ## Deploying section")
	}
	section = readme[start+1:]
	next := strings.Index(section[len("## Deploying\n"):], "\n## ")
	if next < 0 {
		t.Fatal("nothing follows ## Deploying")
	}
	section = section[:len("## Deploying\n")+next+1]
	if rest := readme[start+1+len(section):]; !strings.HasPrefix(rest, "## Configuration\n") {
		t.Errorf("## Deploying is not right before ## Configuration")
	}
	var cur []string
	in, indent := false, ""
	for _, line := range strings.Split(section, "\n") {
		trimmed := strings.TrimLeft(line, " ")
		switch {
		case !in && strings.HasPrefix(trimmed, "```"):
			in, indent, cur = true, line[:len(line)-len(trimmed)], nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, strings.TrimPrefix(line, indent))
		}
	}
	if in {
		t.Fatal("an unterminated code block in ## Deploying")
	}
	return section, blocks
}

var (
	manifestPath = regexp.MustCompile(`manifests/[A-Za-z0-9_.+/-]*[A-Za-z0-9_+/-]`)
	makeTarget   = regexp.MustCompile(`\bmake ([a-z-]+)`)
	kustomizeDir = regexp.MustCompile(`kubectl .*-k (\S+)`)
	patchCommand = regexp.MustCompile(`kubectl -n (\S+) patch statefulset (\S+) --patch-file (\S+)`)
	helmUpgrade  = regexp.MustCompile(`helm upgrade (\S+) (\S+) -n (\S+)`)
	secretCreate = regexp.MustCompile(`kubectl -n (\S+) create secret generic (\S+)`)
)

// TestREADMEDeploying: the README's quick starts name files that exist,
// targets the Makefile has, and the names, flags and images the manifests
// use.
func TestREADMEDeploying(t *testing.T) {
	section, blocks := deploying(t)
	code := strings.Join(blocks, "\n")

	for _, loc := range manifestPath.FindAllStringIndex(section, -1) {
		if loc[0] > 0 && section[loc[0]-1] == '/' {
			continue // /etc/kubernetes/manifests/..., on the node
		}
		p := section[loc[0]:loc[1]]
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(p))); err != nil {
			t.Errorf("README names %s: %v", p, err)
		}
	}
	makefile := string(readFile(t, "Makefile"))
	for _, m := range makeTarget.FindAllStringSubmatch(code, -1) {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m[1]) + `:`).MatchString(makefile) {
			t.Errorf("README runs make %s; the Makefile has no such target", m[1])
		}
	}
	for _, m := range kustomizeDir.FindAllStringSubmatch(code, -1) {
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(m[1]), "kustomization.yaml")); err != nil {
			t.Errorf("README applies -k %s: %v", m[1], err)
		}
	}

	// The image the README pushes is the one the manifests run.
	pods := sidecarPods(t)
	image := container(t, pods[0], sidecarName).Image
	if !strings.Contains(code, "docker push "+image) {
		t.Errorf("the README does not push %s, the image the manifests run", image)
	}

	t.Run("kubeadm", func(t *testing.T) {
		c := container(t, pods[0], sidecarName)
		var shown []string
		for _, b := range blocks {
			if strings.Contains(b, "- --endpoints=") {
				var y struct {
					Args []string `json:"args"`
				}
				if err := yaml.Unmarshal([]byte(b), &y); err != nil {
					t.Fatalf("the README's kubeadm args: %v", err)
				}
				shown = y.Args
			}
		}
		if !slices.Equal(shown, c.Args) {
			t.Errorf("the README shows the args\n%q\nmanifests/kubeadm/etcd.yaml has\n%q", shown, c.Args)
		}
		// The certificate the README makes is the one the sidecar reads,
		// in the directory the pod mounts.
		cert, _ := flagValue(c.Args, "cert")
		key, _ := flagValue(c.Args, "key")
		for _, want := range []string{
			"install -d -m 0700 -o 65532 -g 65532 " + path.Dir(cert),
			"-keyout " + path.Base(key),
			"-out " + path.Base(cert),
		} {
			if !strings.Contains(code, want) {
				t.Errorf("the README's certificate steps lack %q", want)
			}
		}
		if !strings.Contains(code, "install -D -m 0644 manifests/kubeadm/patches/etcd+strategic.yaml /etc/kubernetes/patches/etcd+strategic.yaml") {
			t.Errorf("the README does not install the kubeadm patch")
		}
	})

	t.Run("statefulset", func(t *testing.T) {
		sts := find[appsv1.StatefulSet](t, decodeAll(t, "base", kustomize(t, "manifests/statefulset/base")), "StatefulSet", "etcd")
		var want []string
		for _, v := range sts.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				want = append(want, v.Secret.SecretName)
			}
		}
		var got []string
		for _, m := range secretCreate.FindAllStringSubmatch(code, -1) {
			got = append(got, m[2])
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("the README creates the Secrets %v; the StatefulSet mounts %v", got, want)
		}
	})

	t.Run("kamaji-etcd", func(t *testing.T) {
		var k struct {
			Namespace string `json:"namespace"`
		}
		if err := yaml.Unmarshal(readFile(t, "manifests/statefulset/kamaji-etcd/kustomization.yaml"), &k); err != nil {
			t.Fatal(err)
		}
		var patch appsv1.StatefulSet
		if err := yaml.Unmarshal(readFile(t, "manifests/statefulset/kamaji-etcd/statefulset-patch.yaml"), &patch); err != nil {
			t.Fatal(err)
		}
		m := patchCommand.FindStringSubmatch(code)
		if m == nil {
			t.Fatal("the README does not patch kamaji-etcd's StatefulSet")
		}
		if m[1] != k.Namespace || m[2] != patch.Name || m[3] != "manifests/statefulset/kamaji-etcd/statefulset-patch.yaml" {
			t.Errorf("the README patches statefulset %s in %s with %s; the patch is for %s in %s", m[2], m[1], m[3], patch.Name, k.Namespace)
		}
		if h := helmUpgrade.FindStringSubmatch(code); h == nil || h[1] != patch.Name || h[3] != k.Namespace {
			t.Errorf("the README's helm upgrade %v is not release %s in %s", h, patch.Name, k.Namespace)
		}
		// Every Secret the sidecar mounts is named in the README's table.
		for _, v := range patch.Spec.Template.Spec.Volumes {
			var sources []corev1.VolumeProjection
			if v.Projected != nil {
				sources = v.Projected.Sources
			}
			for _, s := range sources {
				if s.Secret != nil && !strings.Contains(section, "`"+s.Secret.Name+"`") {
					t.Errorf("the README does not name the Secret %s", s.Secret.Name)
				}
			}
		}
	})
}
