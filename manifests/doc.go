// Package manifests holds what users deploy beside etcd — the kubeadm static
// pod, the StatefulSet base and its kamaji-etcd overlay, and the monitoring
// (PodMonitor, PrometheusRule, Grafana dashboard) — and the tests that keep
// them and the agent from drifting apart. It has no Go API.
package manifests
