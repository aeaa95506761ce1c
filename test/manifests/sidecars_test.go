package manifests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// metricsPortName is the name of the sidecar's HTTP port in every manifest;
// the PodMonitor scrapes it.
const metricsPortName = "defrag-metrics"

// agentDefaults are the agent's defaults of the settings these tests read
// (README, "Configuration").
var agentDefaults = map[string]string{
	"defrag-timeout":           "10m",
	"web.listen-address":       ":9479",
	"etcd-storage-quota-bytes": "2147483648",
}

// sidecarPod is a pod template with the agent's sidecar, as a user deploys it.
type sidecarPod struct {
	name       string
	labels     map[string]string
	spec       corev1.PodSpec
	configMaps map[string]*corev1.ConfigMap // by name, from the same kustomization
	// orderedReady: a StatefulSet that creates its pods one at a time, each
	// after the previous one is ready.
	orderedReady bool
}

// sidecarPods returns every pod that runs the sidecar: the kubeadm static
// pod, the base StatefulSet (rendered), and kamaji-etcd's StatefulSet (the
// chart's, from testdata) with statefulset-patch.yaml applied.
func sidecarPods(t *testing.T) []sidecarPod {
	t.Helper()
	kubeadm := find[corev1.Pod](t, decodeAll(t, "kubeadm/etcd.yaml", readFile(t, "manifests/kubeadm/etcd.yaml")), "Pod", "etcd")

	fromStatefulSet := func(name string, sts *appsv1.StatefulSet, objs []object) sidecarPod {
		p := sidecarPod{
			name:         name,
			labels:       sts.Spec.Template.Labels,
			spec:         sts.Spec.Template.Spec,
			configMaps:   map[string]*corev1.ConfigMap{},
			orderedReady: sts.Spec.PodManagementPolicy == "" || sts.Spec.PodManagementPolicy == appsv1.OrderedReadyPodManagement,
		}
		for _, o := range objs {
			if cm, ok := o.Value.(*corev1.ConfigMap); ok {
				p.configMaps[cm.Name] = cm
			}
		}
		return p
	}
	baseObjs := decodeAll(t, "kustomize statefulset/base", kustomize(t, "manifests/statefulset/base"))
	base := fromStatefulSet("statefulset/base", find[appsv1.StatefulSet](t, baseObjs, "StatefulSet", "etcd"), baseObjs)

	kamajiObjs := decodeAll(t, "kustomize statefulset/kamaji-etcd", kustomize(t, "manifests/statefulset/kamaji-etcd"))
	patched := patchWithKustomize(t, readFile(t, "manifests/statefulset/kamaji-etcd/testdata/kamaji-etcd-0.14.0.yaml"),
		readFile(t, "manifests/statefulset/kamaji-etcd/statefulset-patch.yaml"), "StatefulSet", "kamaji-etcd")
	kamajiSts := find[appsv1.StatefulSet](t, decodeAll(t, "patched kamaji-etcd", patched), "StatefulSet", "kamaji-etcd")
	kamaji := fromStatefulSet("statefulset/kamaji-etcd", kamajiSts, kamajiObjs)

	return []sidecarPod{
		{name: "kubeadm", labels: kubeadm.Labels, spec: kubeadm.Spec},
		base,
		kamaji,
	}
}

// container returns the container of pod with the given name.
func container(t *testing.T, p sidecarPod, name string) corev1.Container {
	t.Helper()
	var found []corev1.Container
	for _, c := range p.spec.Containers {
		if c.Name == name {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d containers named %s, want 1", p.name, len(found), name)
	}
	return found[0]
}

var envReference = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs returns the container's args with $(VAR) references to its
// environment expanded as the kubelet expands them; the downward API gives
// fixed test values.
func expandArgs(t *testing.T, c corev1.Container) []string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			v, ok := map[string]string{
				"status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1",
				"metadata.name": "etcd-0", "metadata.namespace": "etcd",
			}[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Errorf("%s: env %s: unexpected field %s", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		}
	}
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = envReference.ReplaceAllStringFunc(a, func(ref string) string {
			if v, ok := env[ref[2:len(ref)-1]]; ok {
				return v
			}
			return ref // the kubelet leaves unknown references as they are
		})
	}
	return args
}

// flagValue returns the value of --name in args (the last one wins), written
// --name=value or --name value.
func flagValue(args []string, name string) (string, bool) {
	v, ok := "", false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if rest, found := strings.CutPrefix(a, "--"+name+"="); found {
			v, ok = rest, true
		} else if a == "--"+name && i+1 < len(args) {
			v, ok = args[i+1], true
			i++
		}
	}
	return v, ok
}

// configValue returns key from a decoded configuration file, where "." nests.
func configValue(cfg map[string]any, key string) (string, bool) {
	cur, ok := cfg[key]
	if !ok {
		cur = cfg
		for _, part := range strings.Split(key, ".") {
			m, isMap := cur.(map[string]any)
			if !isMap {
				return "", false
			}
			if cur, ok = m[part]; !ok {
				return "", false
			}
		}
	}
	switch v := cur.(type) {
	case []any:
		s := make([]string, len(v))
		for i := range v {
			s[i] = fmt.Sprint(v[i])
		}
		return strings.Join(s, ","), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	default:
		return fmt.Sprint(v), true
	}
}

// agent is a sidecar's configuration as the agent sees it: expanded args and
// the configuration file they name.
type agent struct {
	pod     sidecarPod
	c       corev1.Container
	args    []string
	cfgPath string
	cfgText string         // the configuration file's content, "" if none
	cfg     map[string]any // decoded
}

func newAgent(t *testing.T, p sidecarPod) agent {
	t.Helper()
	a := agent{pod: p, c: container(t, p, sidecarName)}
	a.args = expandArgs(t, a.c)
	if path, ok := flagValue(a.args, "config"); ok {
		content, known := mountedFile(t, p, a.c, path)
		if !known {
			t.Fatalf("%s: the configuration file %s does not come from a ConfigMap of the kustomization", p.name, path)
		}
		a.cfgPath, a.cfgText = path, string(content)
		if err := yaml.Unmarshal(content, &a.cfg); err != nil {
			t.Fatalf("%s: %s: %v", p.name, path, err)
		}
	}
	return a
}

// setting returns the value the agent uses for key: flag, environment,
// configuration file, default.
func (a agent) setting(key string) string {
	if v, ok := flagValue(a.args, key); ok {
		return v
	}
	env := "ETCD_DEFRAG_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(key))
	for _, e := range a.c.Env {
		if e.Name == env && e.ValueFrom == nil {
			return e.Value
		}
	}
	if v, ok := configValue(a.cfg, key); ok {
		return v
	}
	return agentDefaults[key]
}

// mountedFile checks that path is provided to the container by one of its
// volume mounts, and that the volume has that file as far as the manifests
// say (ConfigMap keys, Secret items). It returns the content when the file
// comes from a ConfigMap of the same kustomization.
func mountedFile(t *testing.T, p sidecarPod, c corev1.Container, path string) (content []byte, known bool) {
	t.Helper()
	var m *corev1.VolumeMount
	for i := range c.VolumeMounts {
		mp := c.VolumeMounts[i].MountPath
		if (path == mp || strings.HasPrefix(path, mp+"/")) && (m == nil || len(mp) > len(m.MountPath)) {
			m = &c.VolumeMounts[i]
		}
	}
	if m == nil {
		t.Errorf("%s: %s: no volume mount provides %s", p.name, c.Name, path)
		return nil, false
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(path, m.MountPath), "/")
	if m.SubPath != "" {
		rel = filepath.Join(m.SubPath, rel)
	}
	var v *corev1.Volume
	for i := range p.spec.Volumes {
		if p.spec.Volumes[i].Name == m.Name {
			v = &p.spec.Volumes[i]
		}
	}
	if v == nil {
		t.Errorf("%s: %s mounts volume %s, which the pod does not have", p.name, c.Name, m.Name)
		return nil, false
	}
	itemPaths := func(items []corev1.KeyToPath) map[string]string {
		if items == nil {
			return nil
		}
		paths := map[string]string{}
		for _, it := range items {
			paths[it.Path] = it.Key
		}
		return paths
	}
	switch {
	case v.HostPath != nil:
		file := v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathFile
		if (rel == "") != file {
			t.Errorf("%s: %s comes from hostPath %s of type %v", p.name, path, v.HostPath.Path, v.HostPath.Type)
		}
		return nil, false
	case v.ConfigMap != nil:
		cm := p.configMaps[v.ConfigMap.Name]
		if cm == nil {
			t.Errorf("%s: volume %s refers to ConfigMap %s, which the kustomization does not make", p.name, v.Name, v.ConfigMap.Name)
			return nil, false
		}
		key := rel
		if paths := itemPaths(v.ConfigMap.Items); paths != nil {
			key = paths[rel]
		}
		data, ok := cm.Data[key]
		if !ok {
			t.Errorf("%s: ConfigMap %s has no key for %s", p.name, cm.Name, path)
			return nil, false
		}
		return []byte(data), true
	case v.Secret != nil:
		if paths := itemPaths(v.Secret.Items); paths != nil && paths[rel] == "" {
			t.Errorf("%s: Secret %s (volume %s) gives no %s", p.name, v.Secret.SecretName, v.Name, path)
		}
		return nil, false
	case v.Projected != nil:
		all := map[string]string{}
		for _, s := range v.Projected.Sources {
			var items []corev1.KeyToPath
			switch {
			case s.Secret != nil:
				items = s.Secret.Items
			case s.ConfigMap != nil:
				items = s.ConfigMap.Items
			}
			if items == nil {
				return nil, false // a whole Secret or ConfigMap: its keys are not in the manifests
			}
			for k, v := range itemPaths(items) {
				all[k] = v
			}
		}
		if all[rel] == "" {
			t.Errorf("%s: projected volume %s gives no %s (it gives %v)", p.name, v.Name, path, mapKeys(all))
		}
		return nil, false
	default:
		t.Errorf("%s: %s comes from volume %s of an unexpected kind", p.name, path, v.Name)
		return nil, false
	}
}

// fileSettings are the settings that name files.
var fileSettings = []string{"cacert", "cert", "key", "password-file", "web.config.file", "config"}

// checkConfigArgs returns the sidecar's command line for --check-config on
// this machine: every file it names is checked to be mounted, then replaced by
// a test file (certificates by certificates of a test CA; the configuration
// file by its ConfigMap content with the same replacements).
func checkConfigArgs(t *testing.T, a agent) []string {
	t.Helper()
	dir := t.TempDir()
	ca, cert, key := testPKI(t, dir)
	replacement := map[string]string{"cacert": ca, "cert": cert, "key": key}
	args := slices.Clone(a.args)
	cfgText := a.cfgText
	for _, s := range fileSettings {
		if v, ok := flagValue(args, s); ok && s != "config" {
			mountedFile(t, a.pod, a.c, v)
			r, ok := replacement[s]
			if !ok {
				t.Fatalf("%s: --%s: no test file to replace %s", a.pod.name, s, v)
			}
			for i := range args {
				args[i] = strings.Replace(args[i], "--"+s+"="+v, "--"+s+"="+r, 1)
			}
		}
		if v, ok := configValue(a.cfg, s); ok {
			mountedFile(t, a.pod, a.c, v)
			r, ok := replacement[s]
			if !ok {
				t.Fatalf("%s: %s: %s: no test file to replace %s", a.pod.name, a.cfgPath, s, v)
			}
			cfgText = strings.ReplaceAll(cfgText, v, r)
		}
	}
	// etcd's data directory: a read-only mount of etcd's own data volume
	// (TestSidecarDataDir); here any directory.
	if v, ok := flagValue(args, "data-dir"); ok {
		for i := range args {
			args[i] = strings.Replace(args[i], "--data-dir="+v, "--data-dir="+dir, 1)
		}
	}
	if v, ok := configValue(a.cfg, "data-dir"); ok {
		cfgText = strings.ReplaceAll(cfgText, "data-dir: "+v, "data-dir: "+dir)
	}
	if a.cfgPath != "" {
		p := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(p, []byte(cfgText), 0o600); err != nil {
			t.Fatal(err)
		}
		for i := range args {
			args[i] = strings.Replace(args[i], "--config="+a.cfgPath, "--config="+p, 1)
		}
	}
	return args
}

// TestSidecarConfiguration: the agent's own loader accepts every sidecar's
// command line and configuration file, with the files it names (which the
// pod must mount) replaced by test files.
func TestSidecarConfiguration(t *testing.T) {
	for _, p := range sidecarPods(t) {
		t.Run(p.name, func(t *testing.T) {
			a := newAgent(t, p)
			args := checkConfigArgs(t, a)
			code, out := checkConfig(t, args)
			if code != 0 || strings.TrimSpace(out) != "configuration is valid" {
				t.Errorf("etcd-defrag-agent %s --check-config: exit code %d, want 0:\n%s", strings.Join(args, " "), code, out)
			}
		})
	}
}

// TestCheckConfigRejects: a flag the binary does not know, or an unknown key
// in the configuration file, fails --check-config (exit 2, naming it), so a
// manifest with one fails TestSidecarConfiguration.
func TestCheckConfigRejects(t *testing.T) {
	pods := sidecarPods(t)
	kubeadm := newAgent(t, pods[0])
	code, out := checkConfig(t, append(checkConfigArgs(t, kubeadm), "--defrag-rulez=true"))
	if code != 2 || !strings.Contains(out, "unknown flag: --defrag-rulez") {
		t.Errorf("an unknown flag: exit code %d, want 2 naming it:\n%s", code, out)
	}

	base := newAgent(t, pods[1])
	base.cfgText += "defrag-rulez: true\n"
	code, out = checkConfig(t, checkConfigArgs(t, base))
	if code != 2 || !strings.Contains(out, "defrag-rulez") {
		t.Errorf("an unknown key in the configuration file: exit code %d, want 2 naming it:\n%s", code, out)
	}
}

// TestSidecarHardening: every sidecar runs as a non-root user on a read-only
// root filesystem, without privileges or capabilities, with the runtime's
// seccomp profile, bounded resources, read-only mounts, and probes on the
// right endpoints.
func TestSidecarHardening(t *testing.T) {
	images := map[string][]string{}
	for _, p := range sidecarPods(t) {
		t.Run(p.name, func(t *testing.T) {
			c := container(t, p, sidecarName)
			images[c.Image] = append(images[c.Image], p.name)
			sc, psc := c.SecurityContext, p.spec.SecurityContext
			if sc == nil {
				t.Fatal("no securityContext")
			}
			if psc == nil {
				psc = &corev1.PodSecurityContext{}
			}
			pick := func(c, pod *bool) *bool {
				if c != nil {
					return c
				}
				return pod
			}
			if v := pick(sc.RunAsNonRoot, psc.RunAsNonRoot); v == nil || !*v {
				t.Error("runAsNonRoot is not true")
			}
			user := sc.RunAsUser
			if user == nil {
				user = psc.RunAsUser
			}
			if user == nil || *user != 65532 {
				t.Errorf("runAsUser %v, want 65532 (the image's user)", user)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Error("readOnlyRootFilesystem is not true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Error("allowPrivilegeEscalation is not false")
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Error("privileged")
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
				t.Errorf("capabilities %+v, want drop [ALL] and nothing added", sc.Capabilities)
			}
			seccomp := sc.SeccompProfile
			if seccomp == nil {
				seccomp = psc.SeccompProfile
			}
			if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("seccompProfile %+v, want RuntimeDefault", seccomp)
			}
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, hasReq := c.Resources.Requests[r]
				lim, hasLim := c.Resources.Limits[r]
				if !hasReq || !hasLim {
					t.Errorf("%s: request %v, limit %v; want both", r, hasReq, hasLim)
				} else if req.Cmp(lim) > 0 {
					t.Errorf("%s: request %s above limit %s", r, req.String(), lim.String())
				}
			}
			for _, m := range c.VolumeMounts {
				if !m.ReadOnly {
					t.Errorf("volume mount %s is writable", m.MountPath)
				}
			}
			if strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image[strings.LastIndex(c.Image, "/")+1:], ":") {
				t.Errorf("image %s: want a fixed tag", c.Image)
			}
			checkProbes(t, p, c)
		})
	}
	if len(images) != 1 {
		t.Errorf("the sidecars run different images: %v", images)
	}
}

// checkProbes: liveness on /healthz; readiness on /readyz, except in a
// StatefulSet that creates its pods in order (see the kamaji-etcd patch), both
// on the port the agent listens on.
func checkProbes(t *testing.T, p sidecarPod, c corev1.Container) {
	t.Helper()
	a := newAgent(t, p)
	listen := a.setting("web.listen-address")
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("web.listen-address %q: %v", listen, err)
	}
	port, _ := strconv.Atoi(portStr)
	var named []corev1.ContainerPort
	for _, cp := range c.Ports {
		if cp.Name == metricsPortName {
			named = append(named, cp)
		}
	}
	if len(named) != 1 || int(named[0].ContainerPort) != port {
		t.Errorf("ports %+v: want one named %s with the listen port %d", c.Ports, metricsPortName, port)
	}
	// hostNetwork: the probes reach the agent on the pod's IP, which is the
	// node's address on a registered kubelet, but which a kubelet without an
	// API server (kubeadm's external etcd nodes) never fills in, so its
	// probes dial loopback. Only every interface answers both (make kube-e2e
	// runs the static pod on both kinds of kubelet).
	if p.spec.HostNetwork && host != "" {
		t.Errorf("hostNetwork: the agent listens on %q only; a kubelet without an API server probes loopback: want :%d", listen, port)
	}

	readyPath := "/readyz"
	if p.orderedReady {
		readyPath = "/healthz"
	}
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, readyPath}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", pr.kind, pr.path)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path {
			t.Errorf("%s probe: path %s, want %s", pr.kind, g.Path, pr.path)
		}
		if (g.Port.Type == intstr.String && g.Port.StrVal != metricsPortName) || (g.Port.Type == intstr.Int && int(g.Port.IntVal) != port) {
			t.Errorf("%s probe: port %s, want %s", pr.kind, g.Port.String(), metricsPortName)
		}
		if p.spec.HostNetwork && g.Host != "" {
			t.Errorf("%s probe: host %s; with hostNetwork leave it to the kubelet (the node's address, or loopback without an API server)", pr.kind, g.Host)
		}
		// The kubelet probes the pod's IP (the node's, with hostNetwork)
		// unless told otherwise.
		probeHost := g.Host
		if probeHost == "" {
			probeHost = "127.0.0.1" // the test's pod and host IP
		}
		if host != "" && host != "0.0.0.0" && host != "::" && host != probeHost {
			t.Errorf("%s probe: the kubelet probes %s, the agent listens on %s", pr.kind, probeHost, host)
		}
	}
}

// TestSidecarPods: what the pod around the sidecar must give it.
func TestSidecarPods(t *testing.T) {
	pm := find[monitoringv1.PodMonitor](t, decodeAll(t, "podmonitor.yaml", readFile(t, "manifests/monitoring/podmonitor.yaml")), "PodMonitor", "")
	selector, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	quotaFlag := regexp.MustCompile(`^--quota-backend-bytes=(\d+)$`)
	for _, p := range sidecarPods(t) {
		t.Run(p.name, func(t *testing.T) {
			a := newAgent(t, p)
			if !selector.Matches(labels.Set(p.labels)) {
				t.Errorf("the PodMonitor (%s) does not select the pod (labels %v)", selector, p.labels)
			}

			// A defrag runs to its end on SIGTERM, then the agent's shutdown work.
			timeout, err := time.ParseDuration(a.setting("defrag-timeout"))
			if err != nil {
				t.Fatal(err)
			}
			grace := 30 * time.Second // Kubernetes' default
			if p.spec.TerminationGracePeriodSeconds != nil {
				grace = time.Duration(*p.spec.TerminationGracePeriodSeconds) * time.Second
			}
			if grace < timeout+shutdownTimeout {
				t.Errorf("terminationGracePeriodSeconds %v, want at least defrag-timeout %v + %v of shutdown", grace, timeout, shutdownTimeout)
			}

			// The agent's quota (used before etcd 3.6) is etcd's.
			etcd := container(t, p, "etcd")
			for _, arg := range append(slices.Clone(etcd.Command), etcd.Args...) {
				if m := quotaFlag.FindStringSubmatch(arg); m != nil && a.setting("etcd-storage-quota-bytes") != m[1] {
					t.Errorf("etcd-storage-quota-bytes %s, etcd's --quota-backend-bytes %s", a.setting("etcd-storage-quota-bytes"), m[1])
				}
			}
		})
	}
}

// TestKubeadmPatch: kubeadm's patch adds exactly what the example etcd.yaml
// adds to kubeadm's manifest.
func TestKubeadmPatch(t *testing.T) {
	example := find[corev1.Pod](t, decodeAll(t, "kubeadm/etcd.yaml", readFile(t, "manifests/kubeadm/etcd.yaml")), "Pod", "etcd")

	// kubeadm's own manifest: the example without the agent's parts.
	kubeadm := example.DeepCopy()
	delete(kubeadm.Labels, "etcd-defrag-agent/sidecar")
	kubeadm.Spec.TerminationGracePeriodSeconds = nil
	kubeadm.Spec.Containers = slices.DeleteFunc(kubeadm.Spec.Containers, func(c corev1.Container) bool { return c.Name == sidecarName })
	kubeadm.Spec.Volumes = slices.DeleteFunc(kubeadm.Spec.Volumes, func(v corev1.Volume) bool { return strings.HasPrefix(v.Name, "etcd-defrag-agent") })
	b, err := yaml.Marshal(kubeadm)
	if err != nil {
		t.Fatal(err)
	}
	out := patchWithKustomize(t, b, readFile(t, "manifests/kubeadm/patches/etcd+strategic.yaml"), "Pod", "etcd")
	got := find[corev1.Pod](t, decodeAll(t, "patched etcd.yaml", out), "Pod", "etcd")

	// Lists merged by name may come out in another order.
	norm := func(p *corev1.Pod) {
		slices.SortFunc(p.Spec.Containers, func(a, b corev1.Container) int { return strings.Compare(a.Name, b.Name) })
		slices.SortFunc(p.Spec.Volumes, func(a, b corev1.Volume) int { return strings.Compare(a.Name, b.Name) })
	}
	want := example.DeepCopy()
	norm(got)
	norm(want)
	if !equality.Semantic.DeepEqual(got.Spec, want.Spec) || !equality.Semantic.DeepEqual(got.Labels, want.Labels) {
		gb, _ := yaml.Marshal(got)
		t.Errorf("kubeadm's manifest with patches/etcd+strategic.yaml differs from etcd.yaml; got:\n%s", gb)
	}
}

// TestSidecarDataDir: every sidecar gets etcd's data directory, read-only, as
// --data-dir: the mount of the same volume that holds etcd's own --data-dir
// (so the agent sees the filesystem a defrag writes its copy to).
func TestSidecarDataDir(t *testing.T) {
	for _, p := range sidecarPods(t) {
		t.Run(p.name, func(t *testing.T) {
			a := newAgent(t, p)
			dataDir := a.setting("data-dir")
			if dataDir == "" {
				t.Fatal("no data-dir: the agent cannot check the room a defrag needs")
			}
			etcd := container(t, p, "etcd")
			var etcdDir string
			for _, arg := range append(slices.Clone(etcd.Command), etcd.Args...) {
				if v, ok := strings.CutPrefix(arg, "--data-dir="); ok {
					etcdDir = v
				}
			}
			if etcdDir == "" {
				t.Fatal("etcd has no --data-dir")
			}
			volume := ""
			best := ""
			for _, m := range etcd.VolumeMounts {
				if (etcdDir == m.MountPath || strings.HasPrefix(etcdDir, m.MountPath+"/")) && len(m.MountPath) > len(best) {
					volume, best = m.Name, m.MountPath
				}
			}
			if volume == "" {
				t.Fatalf("etcd's --data-dir %s is on no volume", etcdDir)
			}
			found := false
			for _, m := range a.c.VolumeMounts {
				if m.Name != volume {
					continue
				}
				found = true
				if !m.ReadOnly {
					t.Errorf("volume %s is mounted writable", volume)
				}
				if dataDir != m.MountPath && !strings.HasPrefix(dataDir, m.MountPath+"/") {
					t.Errorf("data-dir %s is not on the mount of etcd's volume %s (%s)", dataDir, volume, m.MountPath)
				}
			}
			if !found {
				t.Errorf("the sidecar does not mount etcd's data volume %s", volume)
			}
		})
	}
}
