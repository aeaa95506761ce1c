#!/usr/bin/env bash
# Builds (once, then cached) every program make kube-e2e runs that Debian does
# not ship, each from its Go module in a wrapper module of its own under the
# cache directory, never through the repository's go.mod:
#
#   kube/<K8S>/bin/      kubelet kube-apiserver kube-controller-manager
#                        kube-scheduler kubectl kubeadm   (k8s.io/kubernetes)
#   prometheus/<PROM>/   prometheus promtool              (github.com/prometheus/prometheus)
#   coredns/<COREDNS>/   coredns with the plugins the test needs
#   etcd/<ETCD>/         etcd etcdctl (the layout test/e2e uses, so both share it)
#   pause/               pause: waits for SIGTERM (the sandbox image)
#
# Usage: test/kube/build.sh [kube|prometheus|promtool|coredns|etcd|etcd=vX.Y.Z|pause|all]...
# KUBE_BINS narrows the Kubernetes programs (default: all six).
# Prints the directory of each component it was asked for, one per line, as
# NAME=DIR. Every binary is static (CGO_ENABLED=0).
set -euo pipefail

: "${K8S_VERSION:=v1.35.4}"
: "${PROM_VERSION:=v0.316.0}"
: "${COREDNS_VERSION:=v1.14.7}"
: "${ETCD_RELEASE:=v3.6.16}"
CACHE="${KUBE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/etcd-defrag-agent}"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf 'build: %s\n' "$*" >&2; }
command -v go >/dev/null || { echo "build: the go command is not on PATH (Go 1.26)" >&2; exit 1; }

# lock DIR: one builder per component at a time, across processes.
lock() { mkdir -p "$1"; exec {lockfd}>"$1.lock"; flock "$lockfd"; }
unlock() { flock -u "$lockfd"; exec {lockfd}>&-; }

# The 31 staging modules of k8s.io/kubernetes, replaced by their published
# versions (k8s.io/kubernetes itself replaces them with ./staging/...).
staging_replaces() {
	local mod
	mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
	local v0="v0.${K8S_VERSION#v1.}"
	awk -v v0="$v0" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "replace " $1 " => " $1 " " v0}' "$mod"
}

build_kube() {
	local dir="$CACHE/kube/$K8S_VERSION" bins=${KUBE_BINS:-kubelet kubeadm kube-apiserver kubectl kube-controller-manager kube-scheduler}
	lock "$dir"
	local missing=""
	for b in $bins; do [ -x "$dir/bin/$b" ] || missing="$missing $b"; done
	if [ -n "$missing" ]; then
		local w="$dir/src" minor=${K8S_VERSION#v1.}
		minor=${minor%%.*}
		mkdir -p "$w" "$dir/bin"
		if [ ! -f "$w/go.mod" ]; then
			{ printf 'module kubebuild\n\ngo 1.25.0\n\nrequire k8s.io/kubernetes %s\n\n' "$K8S_VERSION"; staging_replaces; } >"$w/go.mod"
			printf 'package kubebuild\n' >"$w/doc.go"
		fi
		local ld="-s -w"
		for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
		done
		for b in $missing; do
			local s=$SECONDS
			log "building $b $K8S_VERSION"
			(cd "$w" && go build -trimpath -ldflags "$ld" -o "$dir/bin/$b.tmp" "k8s.io/kubernetes/cmd/$b")
			mv "$dir/bin/$b.tmp" "$dir/bin/$b"
			log "built $b in $((SECONDS - s))s"
		done
	fi
	unlock
	echo "kube=$dir/bin"
}

build_prometheus() { # $1: prometheus or promtool
	local dir="$CACHE/prometheus/$PROM_VERSION"
	lock "$dir"
	if [ ! -x "$dir/$1" ]; then
		local s=$SECONDS
		log "building $1 $PROM_VERSION"
		GOBIN="$dir" go install -trimpath -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/$1@$PROM_VERSION"
		log "built $1 in $((SECONDS - s))s"
	fi
	unlock
	echo "$1=$dir"
}

build_coredns() {
	local dir="$CACHE/coredns/$COREDNS_VERSION"
	lock "$dir"
	if [ ! -x "$dir/coredns" ]; then
		local s=$SECONDS w="$dir/src"
		log "building coredns $COREDNS_VERSION"
		mkdir -p "$w"
		printf 'module corednsbuild\n\ngo 1.25.0\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" >"$w/go.mod"
		# Only the plugins the test's Corefile uses, in CoreDNS' own order.
		cat >"$w/main.go" <<'GO'
// Command coredns is CoreDNS with the plugins make kube-e2e needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	dnsserver.Directives = []string{"errors", "log", "health", "ready", "kubernetes"}
	coremain.Run()
}
GO
		(cd "$w" && go build -trimpath -ldflags "-s -w" -o "$dir/coredns.tmp" .)
		mv "$dir/coredns.tmp" "$dir/coredns"
		log "built coredns in $((SECONDS - s))s"
	fi
	unlock
	echo "coredns=$dir"
}

# The same cache and layout as test/e2e (binaries.go): etcd/<release>/{etcd,etcdctl}.
build_etcd() {
	local rel=${1:-$ETCD_RELEASE} cache="$CACHE/etcd"
	local dir="$cache/$rel"
	mkdir -p "$cache"
	exec {efd}>"$cache/$rel.lock"
	flock "$efd"
	local have
	have=$("$dir/etcd" --version 2>/dev/null || true) # not piped into grep -q: SIGPIPE under pipefail
	if ! grep -q "etcd Version: ${rel#v}\$" <<<"$have"; then
		local s=$SECONDS w
		log "building etcd $rel"
		w=$(mktemp -d "$cache/build-$rel-XXXXXX")
		printf 'module etcdbuild\n\ngo 1.26\n' >"$w/go.mod"
		printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "go.etcd.io/etcd/etcdctl/v3"\n\t_ "go.etcd.io/etcd/etcdutl/v3"\n\t_ "go.etcd.io/etcd/server/v3"\n)\n' >"$w/tools.go"
		(cd "$w" && go get "go.etcd.io/etcd/server/v3@$rel" "go.etcd.io/etcd/etcdctl/v3@$rel" "go.etcd.io/etcd/etcdutl/v3@$rel" &&
			go build -trimpath -ldflags "-s -w" -o "$w/bin/" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3)
		mv "$w/bin/server" "$w/bin/etcd"
		rm -rf "$dir"
		mv "$w/bin" "$dir"
		rm -rf "$w"
		log "built etcd $rel in $((SECONDS - s))s"
	fi
	flock -u "$efd"
	exec {efd}>&-
	echo "etcd=$dir"
}

build_pause() {
	local dir="$CACHE/pause"
	lock "$dir"
	if [ ! -x "$dir/pause" ]; then
		mkdir -p "$dir/src"
		printf 'module pause\n\ngo 1.25\n' >"$dir/src/go.mod"
		cat >"$dir/src/main.go" <<'GO'
// Command pause holds a pod's namespaces until SIGTERM or SIGINT.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
GO
		(cd "$dir/src" && go build -trimpath -ldflags "-s -w" -o "$dir/pause" .)
	fi
	unlock
	echo "pause=$dir"
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
	case $what in
	kube) build_kube ;;
	prometheus | promtool) build_prometheus "$what" ;;
	coredns) build_coredns ;;
	etcd) build_etcd ;;
	etcd=*) build_etcd "${what#etcd=}" ;;
	pause) build_pause ;;
	all) build_pause; build_etcd; build_kube; build_coredns; build_prometheus promtool; build_prometheus prometheus ;;
	*) echo "build: unknown component $what" >&2; exit 2 ;;
	esac
done
