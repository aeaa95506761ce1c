module github.com/etcd-defrag-agent/etcd-defrag-agent/test/kube

go 1.26

require sigs.k8s.io/yaml v1.4.0
