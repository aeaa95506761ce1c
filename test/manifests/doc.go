// Package manifests tests what users deploy beside etcd, in manifests/ at
// the repository's root — the kubeadm static pod, the StatefulSet base and
// its kamaji-etcd overlay, and the monitoring (PodMonitor, PrometheusRule,
// Grafana dashboard) — so that they and the agent do not drift apart: strict
// decoding into Kubernetes API types, the agent's --check-config on every
// sidecar's arguments, promtool's unit tests of the alerts. It has no Go API.
package manifests
