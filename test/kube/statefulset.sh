# shellcheck shell=bash
# Part (c): a control plane (kube-apiserver on its own etcd, controller
# manager, scheduler, CoreDNS), three registered nodes with Debian's CNI
# bridge plugin, and manifests/statefulset/base applied with certificates
# made by the README's own commands.

NS=etcd

# cni_up I: node I's pod network, 10.214.I.0/24 on a bridge (Debian's
# containernetworking-plugins: bridge, host-local, loopback).
cni_up() {
	local i=$1 n
	n=$(node_dir "$i")
	cat >"$n/cni/10-kube-e2e.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "kube-e2e", "plugins": [{
  "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET.$i.0/24"}]],
           "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$n/cni-ipam"}}]}
JSON
}

# apiserver_etcd_up: the API server's own etcd (not the one under test), in
# the control plane's namespace on loopback.
apiserver_etcd_up() {
	mkdir -p "$CP/etcd"
	spawn_in_ns cp "$ETCD_DIR/etcd" --name cp --data-dir "$CP/etcd/data" \
		--listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
		--listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
		--initial-cluster cp=http://127.0.0.1:12380 --listen-metrics-urls http://127.0.0.1:12381 \
		>"$CP/etcd.log" 2>&1 &
	undo_push "stop_pid $! 30"
	wait_for "the API server's etcd" 60 in_ns cp curl -sf http://127.0.0.1:12381/health
}

# coredns_up: cluster DNS at $CP_ADDR:53, CoreDNS's kubernetes plugin
# (forward and reverse records of the headless Service's pods).
coredns_up() {
	cat >"$CP/Corefile" <<EOF
.:53 {
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CP/super-admin.conf
        pods insecure
    }
}
EOF
	spawn_in_ns cp "$COREDNS_DIR/coredns" -conf "$CP/Corefile" >"$CP/coredns.log" 2>&1 &
	undo_push "stop_pid $! 20"
	wait_for "CoreDNS ready" 60 in_ns cp curl -sf http://127.0.0.1:18181/ready
	CLUSTER_DNS=$CP_ADDR
}

# local_pvs: one local PersistentVolume per node (8Gi, as the claims ask),
# owned by the pods' user: a local or hostPath volume ignores fsGroup.
local_pvs() {
	local i d
	for i in 1 2 3; do
		d=$(node_dir "$i")/root/var/lib/etcd/pv
		mkdir -p "$d"
		chown 65532:65532 "$d"
		chmod 0700 "$d"
		kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: kube-e2e-n$i
spec:
  capacity: {storage: 8Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  local: {path: /var/lib/etcd/pv}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [n$i]}
YAML
	done
}

# readme_statefulset: the README's own StatefulSet block (certificates,
# namespace, Secrets, kubectl apply -k manifests/statefulset/base), run as
# written, with kubectl pointed at the test's API server.
readme_statefulset() {
	local block d=$W/statefulset-user
	block=$(awk '/^### StatefulSet/ {s = 1} s && /^```sh/ {c = 1; next} c && /^```/ {exit} c' "$REPO/README.md")
	[ -n "$block" ] || fail "README.md: no sh block in ### StatefulSet"
	grep -q 'kubectl apply -n $ns -k manifests/statefulset/base' <<<"$block" || fail "README.md's StatefulSet block does not apply the base"
	mkdir -p "$d"
	ln -sfn "$REPO/manifests" "$d/manifests"
	(cd "$d" && PATH="$KUBE_BIN:$PATH" KUBECONFIG="$CP/super-admin.conf" in_ns cp bash -euo pipefail -c "$block") \
		>"$d/readme-block.log" 2>&1 || { cat "$d/readme-block.log" >&2; fail "the README's StatefulSet block"; }
	log "the README's StatefulSet block ran: certificates, namespace, Secrets, kubectl apply -k manifests/statefulset/base"
}

# sts_pods_ready: the three pods ready, both containers.
sts_pods_ready() {
	kc -n "$NS" get pods -o json | "$KUBECHECK" pods -q --ready etcd-0 etcd-1 etcd-2
}
claims_bound() {
	[ "$(kc -n "$NS" get pvc -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Bound$')" = 3 ]
}

# sts_etcdctl ARGS...: etcdctl against the three pods' IPs with the
# README's agent certificate. The harness's own client skips the server
# name check: etcd's certificate names the pods by DNS, the harness dials IPs.
sts_etcdctl() {
	local eps d=$W/statefulset-user
	eps=$(kc -n "$NS" get pods -o jsonpath='{range .items[*]}https://{.status.podIP}:2379,{end}')
	in_ns cp "$ETCD_DIR/etcdctl" --endpoints "${eps%,}" --cacert "$d/ca.crt" --cert "$d/agent.crt" --key "$d/agent.key" \
		--insecure-skip-tls-verify --command-timeout 30s "$@"
}
sts_leader() { # prints the pod whose member leads
	local url ip
	url=$(sts_etcdctl endpoint status -w json | "$KUBECHECK" leader) || return 1
	ip=${url#https://}
	ip=${ip%:2379}
	kc -n "$NS" get pods -o jsonpath="{range .items[?(@.status.podIP==\"$ip\")]}{.metadata.name}{end}"
}
sts_logs() { # MEMBER=DIR arguments over the collected logs
	local p
	for p in etcd-0 etcd-1 etcd-2; do printf '%s=%s ' "$p" "$W/etcdlogs/$p"; done
}
sts_round_done() { "$KUBECHECK" defrags --since "$1" --"${2:-each}" 1 --done $(sts_logs) >/dev/null 2>&1; }

# sts_fragment LIVE DEAD: as fragment (static.sh), through the pods' IPs.
sts_fragment() {
	local live=$1 dead=$2 s=$SECONDS blob="$W/blob" k rev pids
	head -c $((768 * 1024 - 48)) /dev/urandom | base64 -w0 >"$blob"
	FILL_GEN=$((${FILL_GEN:-0} + 1))
	for ((k = 0; k < live + dead; k += 4)); do
		pids=()
		for j in 0 1 2 3; do
			local key="/kube-e2e/fill/$FILL_GEN/$((k + j))"
			[ $((k + j)) -lt "$live" ] && key="/kube-e2e/live/$FILL_GEN/$((k + j))"
			sts_etcdctl put "$key" <"$blob" >/dev/null &
			pids+=($!)
		done
		for p in "${pids[@]}"; do wait "$p" || fail "etcdctl put"; done
	done
	sts_etcdctl del --prefix /kube-e2e/fill/ >/dev/null
	rev=$(sts_etcdctl endpoint status -w json | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2)
	sts_etcdctl compaction --physical "$rev" >/dev/null
	wait_for "every member reports the free space" 60 sizes_settled sts_etcdctl
	log "wrote $((live + dead)) MiB, deleted $dead MiB of it, compacted at revision $rev ($((SECONDS - s))s)"
}

part_statefulset() {
	local s=$SECONDS i mark=${#UNDO[@]} t0 leader
	log "=== (c) control plane and manifests/statefulset/base"
	for i in 1 2 3; do
		node_up "$i"
		cni_up "$i"
		# The base names etcd's image registry.k8s.io/etcd:3.6.5-0; nothing
		# can be pulled here, so the test's etcd image gets that name too.
		ctr_n "$i" images tag "$ETCD_IMAGE" registry.k8s.io/etcd:3.6.5-0 >/dev/null
		kubeadm_config "$i" >/dev/null
	done
	cp_certs
	apiserver_etcd_up
	apiserver_up http://127.0.0.1:12379 "" "" ""
	controllers_up
	coredns_up
	for i in 1 2 3; do
		kubelet_kubeconfig "$i"
		kubelet_up "$i" registered
	done
	wait_for "three nodes registered" 120 nodes_registered
	wait_for "three nodes ready" 180 nodes_ready
	local_pvs
	# etcd's own account must outlive the pods a rollout replaces.
	mkdir -p "$W/etcdlogs"
	"$KUBECHECK" collect --out "$W/etcdlogs" "$W"/n[123]/root/var/log/pods/"${NS}"_etcd-*/etcd/*.log &
	undo_push "stop_pid $! 10"
	# The agents' logs too (bin/kube-e2e/agentlogs), apart: only etcd's
	# account judges.
	"$KUBECHECK" collect --out "$W/agentlogs" "$W"/n[123]/root/var/log/pods/"${NS}"_etcd-*/etcd-defrag-agent/*.log &
	undo_push "stop_pid $! 10"

	readme_statefulset
	wait_for "claims bound" 120 claims_bound
	wait_for "3 pods ready (etcd and the sidecar)" 300 sts_pods_ready
	kc -n "$NS" get pods -o wide >&2
	kc -n "$NS" get pvc >&2
	log "statefulset: 3 pods ready, claims bound ($((SECONDS - s))s)"
	if want prometheus; then
		prometheus_up
	fi

	# A round, leader last.
	leader=$(sts_leader) || fail "no leader"
	t0=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
	sts_fragment 0 160
	wait_for "a round of defrags in the StatefulSet" 300 sts_round_done "$t0"
	[ "$(sts_leader)" = "$leader" ] || fail "the leader changed during the round ($leader before)"
	"$KUBECHECK" defrags --since "$t0" --each 1 --done --leader "$leader" $(sts_logs) >&2 || fail "the StatefulSet's round"
	log "statefulset: one round, each member once, the leader ($leader) last"

	# A rollout restart while the agents want turns: data that stays makes
	# each defrag take a while, so the rollout's SIGTERMs meet pending agents
	# and running defrags.
	t0=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
	sts_fragment 120 240
	"$KUBECHECK" wait-defrag --since "$t0" --timeout 300s $(sts_logs) >/dev/null || fail "no defrag started"
	kc -n "$NS" rollout restart statefulset etcd >&2
	log "statefulset: rollout restart while the agents take turns"
	in_ns cp "$KUBE_BIN/kubectl" --kubeconfig "$CP/super-admin.conf" -n "$NS" rollout status statefulset etcd --timeout 600s >&2 ||
		fail "rollout status"
	wait_for "3 pods ready after the rollout" 300 sts_pods_ready
	wait_for "the round across the rollout (every member at least once)" 300 sts_round_done "$t0" at-least
	"$KUBECHECK" defrags --since "$t0" --at-least 1 --done $(sts_logs) >&2 || fail "the round across the rollout"
	log "statefulset: rollout restart done, the round completed, nothing overlapped"
	# (d) lowers the quota: first the rollout's data goes, and the agents
	# give its space back.
	sts_etcdctl del --prefix /kube-e2e/live/ >/dev/null
	local rev
	rev=$(sts_etcdctl endpoint status -w json | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2)
	sts_etcdctl compaction --physical "$rev" >/dev/null
	wait_for "every member reports the free space" 60 sizes_settled sts_etcdctl
	wait_for "the agents defragment the emptied members" 300 sts_small

	if want prometheus; then
		part_prometheus
	fi
	nodes_down_to "$mark"
	CLUSTER_DNS=""
	log "=== (c) passed in $((SECONDS - s))s"
}

nodes_ready() {
	[ "$(kc get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" = 3 ]
}

sts_small() { # every member's file under 32 MiB
	local sizes
	sizes=$(sts_etcdctl endpoint status -w json | grep -o '"dbSize":[0-9]*' | cut -d: -f2) || return 1
	[ -n "$sizes" ] || return 1
	for x in $sizes; do [ "$x" -lt $((32 * 1024 * 1024)) ] || return 1; done
}
