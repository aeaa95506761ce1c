#!/usr/bin/env bash
# make kube-e2e: the manifests run by a real kubelet (containerd and runc
# from Debian), a real control plane and a real Prometheus, on this machine
# alone. See test/kube/README.md for what each part proves.
#
#   test/kube/run.sh                        every part
#   KUBE_E2E_PARTS=kamaji,static test/kube/run.sh   as CI runs it
#
# Parts (KUBE_E2E_PARTS, comma separated, default all):
#   kamaji       the kamaji-etcd values per etcd line, on etcd 3.5, 3.6, 3.7
#   static       (b) kubeadm static pods: standalone kubelets, then registered
#   statefulset  (c) control plane + manifests/statefulset/base
#   prometheus   (d) live, on the StatefulSet of (c) (implies statefulset)
#
# Needs root. Installs the Debian packages it needs (containerd, runc,
# containernetworking-plugins, docker.io, iproute2, curl, openssl) when they
# are missing, builds and caches Kubernetes, etcd, CoreDNS and Prometheus
# (test/kube/build.sh), and stops and removes everything it started: by PID,
# its own network and mount namespaces, cgroups, the sysctls the kubelet
# changes, and the mount points it had to create. Logs stay in
# bin/kube-e2e/ (the last run).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/test/kube
# shellcheck source=lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, containerd, the kubelet)"
PARTS=${KUBE_E2E_PARTS:-kamaji,static,statefulset,prometheus}
case ",$PARTS," in *,prometheus,*) PARTS="$PARTS,statefulset" ;; esac
want() { case ",$PARTS," in *",$1,"*) return 0 ;; esac; return 1; }

start=$SECONDS
OUT=$REPO/bin/kube-e2e
rm -rf "$OUT"
mkdir -p "$OUT"
W=$(mktemp -d /tmp/kube-e2e.XXXXXX)
finish() {
	local rc=$?
	set +e
	trap '' INT TERM
	log "teardown"
	teardown
	# Keep the logs of this run; remove everything else.
	(cd "$W" && find . \( -name containerd -prune \) -o \( -name '*.log' -o -name '*.txt' -o -name '*.yaml' -o -name '*.yml' \) -print |
		grep -v '/root/etc' |
		while read -r f; do mkdir -p "$OUT/$(dirname "$f")" && cp "$f" "$OUT/$f"; done) 2>/dev/null
	rm -rf "$W" || log "teardown: could not remove all of $W"
	if [ "$rc" = 0 ]; then
		log "PASS in $((SECONDS - start))s (logs in bin/kube-e2e/)"
	else
		log "FAIL after $((SECONDS - start))s (logs in bin/kube-e2e/)"
	fi
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- Prerequisites: each names the Debian package that provides it ----------
need containerd containerd
need runc runc
need ip iproute2
need nsenter util-linux
need curl curl
need openssl openssl
need make make
command -v go >/dev/null || fail "the go command is missing: Go 1.26 (the project's toolchain) must be on PATH"
CNI_BIN=/usr/lib/cni
need_file_pkg() {
	KUBE_E2E_INSTALL=${KUBE_E2E_INSTALL:-1}
	[ "$KUBE_E2E_INSTALL" = 1 ] || fail "$CNI_BIN/bridge is missing: install Debian's package $1"
	apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null ||
		fail "apt-get install $1 failed"
}
[ -x "$CNI_BIN/bridge" ] || need_file_pkg containernetworking-plugins

# --- Programs: built once, then cached ----------------------------------------
s=$SECONDS
comps="pause etcd kube"
KUBE_BINS="kubelet kubeadm kube-apiserver kubectl"
want statefulset && KUBE_BINS="$KUBE_BINS kube-controller-manager kube-scheduler"
export KUBE_BINS
want statefulset && comps="$comps coredns"
want prometheus && comps="$comps promtool prometheus"
eval "$("$HERE/build.sh" $comps | sed 's/^\([a-z]*\)=/dir_\1=/')"
PAUSE_DIR=$dir_pause ETCD_DIR=$dir_etcd KUBE_BIN=$dir_kube
COREDNS_DIR=${dir_coredns:-} PROM_DIR=${dir_prometheus:-}
K8S_VERSION=$("$KUBE_BIN/kubelet" --version | awk '{print $2}')
ETCD_RELEASE=v$("$ETCD_DIR/etcd" --version | awk '/etcd Version/ {print $3}')
KUBECHECK=$W/kubecheck
(cd "$HERE" && CGO_ENABLED=0 go build -o "$KUBECHECK" ./kubecheck) || fail "build kubecheck"
log "programs ready in $((SECONDS - s))s: Kubernetes $K8S_VERSION, etcd $ETCD_RELEASE, $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -1)"

# shellcheck source=static.sh
. "$HERE/static.sh"
# shellcheck source=controlplane.sh
. "$HERE/controlplane.sh"
# shellcheck source=statefulset.sh
. "$HERE/statefulset.sh"
# shellcheck source=prometheus.sh
. "$HERE/prometheus.sh"
# shellcheck source=kamaji.sh
. "$HERE/kamaji.sh"

s=$SECONDS
images_build
save_sysctls
switch_up

if want kamaji; then
	part_kamaji
fi
if want static; then
	for mode in ${KUBE_E2E_STATIC_MODES:-standalone registered}; do
		part_static "$mode"
	done
fi
if want statefulset; then
	part_statefulset
fi
