# shellcheck shell=bash
# Shared by the scripts of make kube-e2e: logging, the undo stack that the
# teardown runs (on success and on failure), bounded waits, and the "nodes":
# each node is a network namespace of its own (its own address on a bridge in
# a switch namespace) plus a private mount namespace in which the node's own
# directories are bind-mounted over the fixed paths the kubelet, containerd
# and the manifests use (/etc/kubernetes, /var/lib/etcd, /var/lib/kubelet,
# /var/log/pods, /var/log/containers, /run/containerd, and /run/netns, where
# containerd's CRI keeps its pods' network namespaces). Nothing a node does
# is visible in the host's network or at those paths on the host.

KE2E_PREFIX=${KE2E_PREFIX:-ke2e}
SUBNET=10.213.0          # nodes: .11, .12, .13; the control plane and Prometheus: .2
POD_SUBNET=10.214        # pods of node i: 10.214.i.0/24
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
BIND_PATHS="/etc/kubernetes /var/lib/etcd /var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /run/netns"

phase_start=$SECONDS
log() { printf '%s kube-e2e: %s\n' "$(date +%T)" "$*" >&2; }
fail() { printf '%s kube-e2e: FAIL: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

# --- The undo stack ----------------------------------------------------------
# Every action that changes the machine pushes the command that reverts it;
# teardown runs them newest first, each once, and reports failures.
UNDO=()
undo_push() { UNDO+=("$*"); }
teardown() {
	local i
	for ((i = ${#UNDO[@]} - 1; i >= 0; i--)); do
		local t=$SECONDS
		eval "${UNDO[i]}" || log "teardown: '${UNDO[i]}' failed"
		[ $((SECONDS - t)) -lt 5 ] || log "teardown: '${UNDO[i]}' took $((SECONDS - t))s"
	done
	UNDO=()
}

# stop_pid PID [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds (default 20),
# then SIGKILL. Only the process we started, by its PID.
stop_pid() {
	local pid=$1 timeout=${2:-20} i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < timeout * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
		sleep 0.1
	done
	log "pid $pid did not stop in ${timeout}s; SIGKILL"
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return 0
}

# wait_for DESCRIPTION TIMEOUT COMMAND...: run COMMAND every 0.5 s until it
# succeeds; fail naming DESCRIPTION after TIMEOUT seconds.
wait_for() {
	local what=$1 timeout=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || fail "$what: not within ${timeout}s"
		sleep 0.5
	done
}

# --- Prerequisites -----------------------------------------------------------
# need COMMAND PACKAGE: a missing prerequisite fails naming the package to
# install; with KUBE_E2E_INSTALL=1 (the default as root) it is installed.
need() {
	command -v "$1" >/dev/null 2>&1 && return 0
	if [ "${KUBE_E2E_INSTALL:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
		log "installing Debian's $2 (for $1)"
		if [ -z "${APT_UPDATED:-}" ]; then
			apt-get update -qq >/dev/null || fail "apt-get update failed (needed to install $2)"
			APT_UPDATED=1
		fi
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null ||
			fail "apt-get install $2 failed"
		command -v "$1" >/dev/null 2>&1 || fail "$1 is still missing after installing $2"
		return 0
	fi
	fail "$1 is missing: install Debian's package $2"
}

# --- Host state --------------------------------------------------------------
# The kubelet sets kernel sysctls (not per network namespace): remember and
# restore them.
save_sysctls() {
	local s v
	for s in $SYSCTLS; do
		v=$(sysctl -n "$s" 2>/dev/null) || continue
		undo_push "restore_sysctl $s '$v'"
	done
}
restore_sysctl() {
	local now
	now=$(sysctl -n "$1" 2>/dev/null)
	[ "$now" = "$2" ] && return 0
	sysctl -q -w "$1=$2" >/dev/null && log "restored $1 to $2 (was $now)"
}

# make_mountpoint PATH: the bind mounts need PATH to exist on the host; create
# it (and its missing parents) if it does not, and remove what we created.
make_mountpoint() {
	local p=$1 top=""
	while [ ! -e "$p" ]; do
		top=$p
		p=$(dirname "$p")
	done
	[ -n "$top" ] || return 0
	mkdir -p "$1"
	undo_push "rm_created '$top' '$1'"
}
# rm_created TOP PATH: remove the empty directories from PATH up to TOP.
rm_created() {
	local top=$1 p=$2
	while :; do
		rmdir "$p" 2>/dev/null || { log "teardown: $p is not empty; left in place"; return 0; }
		[ "$p" = "$top" ] && return 0
		p=$(dirname "$p")
	done
}

# --- The switch --------------------------------------------------------------
# A namespace holding the bridge every node is plugged into, and the address
# $SUBNET.2 (the control plane, cluster DNS and Prometheus live there).
switch_up() {
	# ip netns add makes /run/netns a mount point (bound on itself) and
	# creates it if needed: put back what was there.
	if [ ! -d /run/netns ]; then
		undo_push "umount /run/netns 2>/dev/null; rmdir /run/netns"
	elif ! mountpoint -q /run/netns; then
		undo_push "[ -z \"\$(ls -A /run/netns)\" ] && umount /run/netns 2>/dev/null; true"
	fi
	ip netns add "$KE2E_PREFIX-sw" || fail "ip netns add $KE2E_PREFIX-sw"
	undo_push "ip netns del $KE2E_PREFIX-sw"
	ipx sw link add br0 type bridge
	ipx sw link set br0 up
	ipx sw link set lo up
	ipx sw addr add "$SUBNET.1/24" dev br0
	# The control plane's own namespace, plugged into the switch.
	ip netns add "$KE2E_PREFIX-cp"
	undo_push "ip netns del $KE2E_PREFIX-cp"
	ipx sw link add cp type veth peer name eth0 netns "$KE2E_PREFIX-cp"
	ipx sw link set cp master br0 up
	ipx cp link set lo up
	ipx cp addr add "$SUBNET.2/24" dev eth0
	ipx cp link set eth0 up
}
ipx() { local ns=$1; shift; ip -n "$KE2E_PREFIX-$ns" "$@"; }
# in_ns NS COMMAND...: run a command in a namespace's network only.
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$KE2E_PREFIX-$ns" -- "$@"; }
spawn_in_ns() { local ns=$1; shift; exec nsenter --net="/run/netns/$KE2E_PREFIX-$ns" -- "$@"; }

# --- Nodes -------------------------------------------------------------------
# node_dir I: the node's directory; node_ip I; node_name I.
node_dir() { echo "$W/n$1"; }
node_ip() { echo "$SUBNET.1$1"; }
node_name() { echo "n$1"; }
node_holder() { cat "$(node_dir "$1")/holder.pid"; }
# on_node I COMMAND...: run a command in the node's network and mount namespaces.
on_node() { local i=$1; shift; nsenter --target "$(node_holder "$i")" --mount --net -- "$@"; }
# spawn_on_node I COMMAND...: the same, replacing the calling (background)
# subshell, so that $! of `spawn_on_node ... &` is the command's own PID.
spawn_on_node() { local i=$1; shift; exec nsenter --target "$(node_holder "$i")" --mount --net -- "$@"; }
ctr_n() { local i=$1; shift; ctr --address "$(node_dir "$i")/containerd.sock" -n k8s.io "$@"; }

# node_up I: the node's namespaces, its directories and its containerd, with
# the test's images imported.
node_up() {
	local i=$1 n ip p
	n=$(node_dir "$i")
	ip=$(node_ip "$i")
	# A directory left by an earlier part: keep it for its logs, start afresh.
	[ -d "$n" ] && mv "$n" "$n.$(date +%H%M%S)"
	mkdir -p "$n"
	ip netns add "$KE2E_PREFIX-n$i" || fail "ip netns add $KE2E_PREFIX-n$i"
	undo_push "ip netns del $KE2E_PREFIX-n$i"
	ipx sw link add "n$i" type veth peer name eth0 netns "$KE2E_PREFIX-n$i"
	ipx sw link set "n$i" master br0 up
	ipx "n$i" link set lo up
	ipx "n$i" addr add "$ip/24" dev eth0
	ipx "n$i" link set eth0 up
	# Pods of other nodes, and a default route (nothing answers there: the
	# host's network is not reachable from a node).
	local j
	for j in 1 2 3; do
		[ "$j" = "$i" ] || ipx "n$i" route add "$POD_SUBNET.$j.0/24" via "$(node_ip "$j")"
	done
	ipx cp route replace "$POD_SUBNET.$i.0/24" via "$ip"
	ipx sw route replace "$POD_SUBNET.$i.0/24" via "$ip"
	in_ns "n$i" sysctl -q -w net.ipv4.ip_forward=1 >/dev/null

	for p in $BIND_PATHS; do
		make_mountpoint "$p"
		mkdir -p "$n/root$p"
	done
	# The holder keeps the node's private mount namespace alive; every process
	# of the node enters it (and the node's network namespace).
	local mounts=""
	for p in $BIND_PATHS; do mounts="$mounts mount --bind '$n/root$p' '$p' &&"; done
	nsenter --net="/run/netns/$KE2E_PREFIX-n$i" -- unshare --mount --propagation private -- \
		sh -c "$mounts touch '$n/holder.ready' && exec sleep infinity" &
	echo $! >"$n/holder.pid"
	undo_push "stop_pid $!"
	wait_for "node $i's mount namespace" 10 test -e "$n/holder.ready"

	mkdir -p "$n/containerd/root" "$n/containerd/state" "$n/cni"
	cat >"$n/containerd.toml" <<TOML
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$n/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$n/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
TOML
	spawn_on_node "$i" containerd --config "$n/containerd.toml" >"$n/containerd.log" 2>&1 &
	local cpid=$!
	undo_push "node_containers_down $i; stop_pid $cpid 30; cgroups_down $i"
	wait_for "node $i's containerd" 30 ctr --address "$n/containerd.sock" version
	for p in "${IMAGE_TARS[@]}"; do
		ctr_n "$i" images import "$p" >/dev/null || fail "node $i: ctr images import $p"
	done
}

# node_containers_down I: stop and delete every task and container of the
# node's containerd, then wait for its shims (identified by the node's own
# containerd socket on their command line) to exit.
node_containers_down() {
	local i=$1 n id pid
	n=$(node_dir "$i")
	[ -S "$n/containerd.sock" ] || return 0
	for id in $(ctr_n "$i" tasks ls -q 2>/dev/null); do
		ctr_n "$i" tasks kill -s KILL "$id" >/dev/null 2>&1
	done
	for id in $(ctr_n "$i" tasks ls -q 2>/dev/null); do
		for _ in $(seq 1 50); do
			ctr_n "$i" tasks delete "$id" >/dev/null 2>&1 && break
			sleep 0.1
		done
	done
	for id in $(ctr_n "$i" containers ls -q 2>/dev/null); do
		ctr_n "$i" containers delete "$id" >/dev/null 2>&1
	done
	for pid in $(node_shims "$i"); do stop_pid "$pid" 10; done
}
node_shims() {
	local n p
	n=$(node_dir "$1")
	for p in /proc/[0-9]*; do
		tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "containerd-shim.*-address $n/containerd.sock" && basename "$p"
	done
	return 0
}

# kubelet_up I MODE: the node's kubelet, standalone (static pods only, no API
# server: how kubeadm's guide runs the nodes of an external etcd cluster) or
# registered (MODE=registered: with $W/kubeconfig-nI of the control plane).
kubelet_up() {
	local i=$1 mode=$2 n ip
	n=$(node_dir "$i")
	ip=$(node_ip "$i")
	mkdir -p "$n/root/etc/kubernetes/manifests"
	: >"$n/resolv.conf"
	[ -n "${CLUSTER_DNS:-}" ] && printf 'nameserver %s\n' "$CLUSTER_DNS" >"$n/resolv.conf"
	cat >"$n/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 2s
syncFrequency: 10s
cgroupDriver: cgroupfs
cgroupRoot: /$KE2E_PREFIX-n$i
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$n/containerd.sock
address: $ip
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
resolvConf: $n/resolv.conf
clusterDomain: cluster.local
${CLUSTER_DNS:+clusterDNS: [$CLUSTER_DNS]}
protectKernelDefaults: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
	# The kubelet wants its cgroupRoot to exist in every hierarchy.
	local h
	for h in /sys/fs/cgroup/*/; do
		[ -d "$h$KE2E_PREFIX-n$i" ] && continue
		mkdir "$h$KE2E_PREFIX-n$i"
		if [ -f "${h}cpuset.cpus" ]; then
			cat "${h}cpuset.cpus" >"$h$KE2E_PREFIX-n$i/cpuset.cpus"
			cat "${h}cpuset.mems" >"$h$KE2E_PREFIX-n$i/cpuset.mems"
		fi
	done
	local args=(--config "$n/kubelet.yaml" --hostname-override "n$i" --node-ip "$ip" --v=1)
	[ "$mode" = registered ] && args+=(--kubeconfig "$W/kubeconfig-n$i")
	spawn_on_node "$i" "$KUBE_BIN/kubelet" "${args[@]}" >>"$n/kubelet.log" 2>&1 &
	local kpid=$!
	echo "$kpid" >"$n/kubelet.pid"
	undo_push "stop_pid $kpid 30"
	wait_for "node $i's kubelet /healthz" 60 on_node "$i" curl -sf http://127.0.0.1:10248/healthz -o /dev/null
}
kubelet_down() {
	local i=$1
	stop_pid "$(cat "$(node_dir "$i")/kubelet.pid")" 30
}

# cgroups_down I: remove the cgroups the node's kubelet made (its
# cgroupRoot), deepest first, in every hierarchy.
cgroups_down() {
	local root=/$KE2E_PREFIX-n$1 h
	for h in /sys/fs/cgroup/*/; do
		[ -d "$h$root" ] || continue
		find "$h$root" -depth -type d -exec rmdir {} + 2>/dev/null
		[ -d "$h$root" ] && log "teardown: cgroup $h$root is still there"
	done
	return 0
}

# --- Images ------------------------------------------------------------------
# dockerd_down PID DIR: stop the private dockerd, unmount what it left mounted
# under DIR (its data root), remove DIR. Idempotent.
dockerd_down() {
	[ -d "$2" ] || return 0
	stop_pid "$1" 30
	awk -v dir="$2/" 'index($2, dir) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do umount "$m"; done
	rm -rf "$2"
}
# images_build: the agent image from make image (tagged as the manifests name
# it), an etcd image and a pause image FROM scratch around static binaries;
# saved as tarballs for ctr images import. Uses a private dockerd (its own
# socket, data and exec roots, no bridge, no iptables), stopped afterwards.
AGENT_IMAGE=registry.example.com/etcd-defrag-agent:v0.1.0
PAUSE_IMAGE=kube-e2e.invalid/pause:v1
IMAGE_TARS=()
images_build() {
	local d="$W/dockerd" img="$W/images" s=$SECONDS
	mkdir -p "$d" "$img/etcd" "$img/pause"
	need dockerd docker.io
	dockerd --host "unix://$d/docker.sock" --data-root "$d/data" --exec-root "$d/exec" \
		--pidfile "$d/docker.pid" --bridge none --iptables=false --ip-masq=false \
		>"$d/dockerd.log" 2>&1 &
	local dpid=$!
	undo_push "dockerd_down $dpid '$d'"
	local DOCKER_HOST="unix://$d/docker.sock"
	export DOCKER_HOST
	wait_for "the private dockerd" 60 docker info >/dev/null 2>&1
	make -C "$REPO" image IMAGE="${AGENT_IMAGE%:*}" IMAGE_TAG="${AGENT_IMAGE##*:}" >"$img/make-image.log" 2>&1 ||
		{ tail -20 "$img/make-image.log" >&2; fail "make image"; }
	cp "$ETCD_DIR/etcd" "$ETCD_DIR/etcdctl" "$img/etcd/"
	printf 'FROM scratch\nCOPY etcd etcdctl /usr/local/bin/\nENV PATH=/usr/local/bin\nENTRYPOINT ["etcd"]\n' >"$img/etcd/Dockerfile"
	docker build -q -t "$ETCD_IMAGE" "$img/etcd" >/dev/null || fail "docker build the etcd image"
	cp "$PAUSE_DIR/pause" "$img/pause/"
	printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$img/pause/Dockerfile"
	docker build -q -t "$PAUSE_IMAGE" "$img/pause" >/dev/null || fail "docker build the pause image"
	local ref
	for ref in "$AGENT_IMAGE" "$ETCD_IMAGE" "$PAUSE_IMAGE"; do
		local tar="$img/$(echo "$ref" | tr '/:' '__').tar"
		docker save -o "$tar" "$ref" || fail "docker save $ref"
		IMAGE_TARS+=("$tar")
	done
	unset DOCKER_HOST
	dockerd_down "$dpid" "$d"
	log "images built and saved in $((SECONDS - s))s: ${IMAGE_TARS[*]##*/}"
}
