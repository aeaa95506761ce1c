# shellcheck shell=bash
# Part (b): three kubeadm control-plane nodes running etcd as a static pod
# with the sidecar, once with standalone kubelets (no API server: kubeadm's
# guide for an external HA etcd cluster) and once registered with an API
# server that uses this very etcd cluster (kubeadm's stacked etcd).

ETCD_IMAGE_REPO=kube-e2e.invalid
ETCD_IMAGE=$ETCD_IMAGE_REPO/etcd:$ETCD_RELEASE

initial_cluster() { echo "n1=https://$(node_ip 1):2380,n2=https://$(node_ip 2):2380,n3=https://$(node_ip 3):2380"; }

# kubeadm_config I: the configuration of node I, as kubeadm's guide for
# an external etcd cluster writes it (the etcd image is the test's own).
kubeadm_config() {
	local i=$1 f ip
	f=$(node_dir "$i")/kubeadm.yaml
	ip=$(node_ip "$i")
	cat >"$f" <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: $ip
nodeRegistration:
  name: n$i
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $K8S_VERSION
clusterName: kube-e2e
controlPlaneEndpoint: $SUBNET.2:6443
etcd:
  local:
    imageRepository: $ETCD_IMAGE_REPO
    imageTag: $ETCD_RELEASE
    serverCertSANs: [$ip]
    peerCertSANs: [$ip]
    extraArgs:
    - name: initial-cluster
      value: $(initial_cluster)
    - name: initial-cluster-state
      value: new
YAML
	echo "$f"
}

# static_certs: kubeadm's etcd certificates (one CA, copied to every node as
# the guide does; per node the server, peer, healthcheck and API server
# client certificates), then on every node the agent's certificate made by
# the README's own step 1, run as it is written there.
static_certs() {
	local i step1
	step1=$(sed -n '/^# 1. On the node/,/^# 2. Edit/p' "$REPO/README.md")
	[ -n "$step1" ] || fail "README.md: no step '# 1. On the node' in the kubeadm section"
	on_node 1 "$KUBE_BIN/kubeadm" init phase certs etcd-ca --config "$(kubeadm_config 1)" >/dev/null
	for i in 2 3; do
		mkdir -p "$(node_dir "$i")/root/etc/kubernetes/pki/etcd"
		cp -p "$(node_dir 1)"/root/etc/kubernetes/pki/etcd/ca.* "$(node_dir "$i")/root/etc/kubernetes/pki/etcd/"
	done
	for i in 1 2 3; do
		local cfg
		cfg=$(kubeadm_config "$i")
		for c in etcd-server etcd-peer etcd-healthcheck-client apiserver-etcd-client; do
			on_node "$i" "$KUBE_BIN/kubeadm" init phase certs "$c" --config "$cfg" >/dev/null ||
				fail "node $i: kubeadm init phase certs $c"
		done
		on_node "$i" bash -euo pipefail -c "$step1" >/dev/null 2>&1 || fail "node $i: the README's step 1 (the agent's certificate) failed"
	done
	log "certificates: kubeadm's etcd phases and the README's step 1 on every node"
}

# readme_manifest I: manifests/kubeadm/etcd.yaml changed where the README
# tells a user to (the node's name and address, the initial cluster, the
# image); any other change here would be a test that does not test the file.
readme_manifest() {
	local i=$1 ip
	ip=$(node_ip "$i")
	sed -e "s#10\.0\.0\.11#$ip#g" \
		-e "s#--initial-cluster=.*#--initial-cluster=$(initial_cluster)#" \
		-e "s#--name=cp-1#--name=n$i#" \
		-e "s#image: registry.k8s.io/etcd:.*#image: $ETCD_IMAGE#" \
		"$REPO/manifests/kubeadm/etcd.yaml"
}
# agent_debug: KUBE_E2E_AGENT_DEBUG=1 adds --log.level=debug to the sidecar,
# to see its decisions when a check fails (off by default: the manifests as
# shipped are what is tested).
agent_debug() {
	if [ "${KUBE_E2E_AGENT_DEBUG:-0}" = 1 ]; then
		sed 's#^\(    - \)--log.format=json#\1--log.format=json\n\1--log.level=debug#'
	else
		cat
	fi
}

# kubeadm_manifests: on every node, kubeadm's own etcd phase, without and
# with the repository's patches directory; the patched pod must be the pod
# the README's edit gives.
kubeadm_manifests() {
	local i n
	for i in 1 2 3; do
		n=$(node_dir "$i")
		on_node "$i" "$KUBE_BIN/kubeadm" init phase etcd local --config "$n/kubeadm.yaml" >"$n/kubeadm-etcd.log" 2>&1 ||
			{ cat "$n/kubeadm-etcd.log" >&2; fail "node $i: kubeadm init phase etcd local"; }
		mv "$n/root/etc/kubernetes/manifests/etcd.yaml" "$n/kubeadm-etcd.yaml"
		# patches.directory in the configuration (kubeadm refuses --patches
		# next to --config); the README names both.
		sed "s#^nodeRegistration:#patches:\n  directory: $REPO/manifests/kubeadm/patches\nnodeRegistration:#" \
			"$n/kubeadm.yaml" >"$n/kubeadm-patches.yaml"
		on_node "$i" "$KUBE_BIN/kubeadm" init phase etcd local --config "$n/kubeadm-patches.yaml" \
			>"$n/kubeadm-etcd-patched.log" 2>&1 ||
			{ cat "$n/kubeadm-etcd-patched.log" >&2; fail "node $i: kubeadm init phase etcd local --patches"; }
		mv "$n/root/etc/kubernetes/manifests/etcd.yaml" "$n/kubeadm-etcd-patched.yaml"
		readme_manifest "$i" >"$n/readme-etcd.yaml"
		"$KUBECHECK" samepod "$n/kubeadm-etcd-patched.yaml" "$n/readme-etcd.yaml" >"$n/samepod.txt" 2>&1 ||
			{ cat "$n/samepod.txt" >&2; fail "node $i: kubeadm's etcd.yaml with manifests/kubeadm/patches is not the README's pod"; }
	done
	log "kubeadm init phase etcd local --patches manifests/kubeadm/patches gives the README's pod on every node:"
	sed 's/^/    /' "$(node_dir 1)/samepod.txt" >&2
}

# kubelet_pods I: the kubelet's own view of its pods (its /pods endpoint).
kubelet_pods() { in_ns cp curl -sfk --max-time 10 "https://$(node_ip "$1"):10250/pods"; }
pods_ok() { # I FLAGS...: kubecheck pods on node I's etcd pod
	local i=$1
	shift
	kubelet_pods "$i" | "$KUBECHECK" pods "$@" "etcd-n$i"
}

# sidecar_pid I: the PID of node I's agent process (the task of the running
# container named etcd-defrag-agent in its containerd).
sidecar_pid() {
	local i=$1 id
	id=$(ctr_n "$i" containers ls -q 'labels."io.kubernetes.container.name"==etcd-defrag-agent')
	for c in $id; do
		ctr_n "$i" tasks ls | awk -v id="$c" '$1 == id && $3 == "RUNNING" {print $2}'
	done
}

# etcdctl_n I ARGS...: etcdctl on node I with kubeadm's healthcheck client
# certificate, against every member.
etcdctl_n() {
	local i=$1 p
	shift
	p=$(node_dir "$i")/root/etc/kubernetes/pki/etcd
	in_ns "n$i" "$ETCD_DIR/etcdctl" --endpoints "https://$(node_ip 1):2379,https://$(node_ip 2):2379,https://$(node_ip 3):2379" \
		--cacert "$p/ca.crt" --cert "$p/healthcheck-client.crt" --key "$p/healthcheck-client.key" --command-timeout 30s "$@"
}
leader_node() { # prints the index of the node whose member leads
	local url
	url=$(etcdctl_n 1 endpoint status -w json | "$KUBECHECK" leader) || return 1
	case $url in *"$(node_ip 1)"*) echo 1 ;; *"$(node_ip 2)"*) echo 2 ;; *"$(node_ip 3)"*) echo 3 ;; *) return 1 ;; esac
}
etcd_logs() { # the MEMBER=LOGDIR arguments of kubecheck defrags
	local i d
	for i in 1 2 3; do
		for d in "$(node_dir "$i")"/root/var/log/pods/kube-system_etcd-n"${i}"_*/etcd; do
			[ -d "$d" ] && printf 'n%s=%s ' "$i" "$d"
		done
	done
}

# fragment LIVE DEAD: write LIVE MiB of data that stays and DEAD MiB that is
# deleted again, then compact, so that every member's file is mostly free
# pages (the default rule's second clause: more than half the file free and
# over 100 MiB). A defrag copies the live data: LIVE makes it take a while.
fragment() {
	local live=$1 dead=$2 s=$SECONDS blob="$W/blob" k rev pids
	head -c $((768 * 1024 - 48)) /dev/urandom | base64 -w0 >"$blob" # just under 1 MiB of text
	FILL_GEN=$((${FILL_GEN:-0} + 1))
	for ((k = 0; k < live + dead; k += 4)); do
		pids=()
		for j in 0 1 2 3; do
			local key="/kube-e2e/fill/$FILL_GEN/$((k + j))"
			[ $((k + j)) -lt "$live" ] && key="/kube-e2e/live/$FILL_GEN/$((k + j))"
			etcdctl_n 1 put "$key" <"$blob" >/dev/null &
			pids+=($!)
		done
		for p in "${pids[@]}"; do wait "$p" || fail "etcdctl put"; done
	done
	etcdctl_n 1 del --prefix /kube-e2e/fill/ >/dev/null
	rev=$(etcdctl_n 1 endpoint status -w json | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2)
	etcdctl_n 1 compaction --physical "$rev" >/dev/null
	# bbolt frees the compacted pages for good only in a later write
	# transaction; until then a member reports them as in use (and an agent
	# whose rule runs then says "no defrag"). A live cluster writes all the
	# time; this one is idle, so write until every member reports the free
	# space.
	wait_for "every member reports the free space" 60 sizes_settled etcdctl_n 1
	log "wrote $((live + dead)) MiB, deleted $dead MiB of it, compacted at revision $rev ($((SECONDS - s))s)"
}
# sizes_settled ETCDCTL...: one small write, then every member fragmented.
sizes_settled() {
	"$@" put /kube-e2e/tick "$SECONDS" >/dev/null &&
		"$@" endpoint status -w json | "$KUBECHECK" fragmented
}

# agents_cycled_after T: every agent finished a cycle after the Unix time T
# (so a second defrag, had the rule wanted one, would have shown by now).
agents_cycled_after() {
	local i v
	for i in 1 2 3; do
		v=$(in_ns cp curl -sf --max-time 5 "http://$(node_ip "$i"):9479/metrics" |
			awk '$1 == "etcd_defrag_agent_last_cycle_timestamp_seconds" {printf "%d", $2}')
		[ -n "$v" ] && [ "$v" -gt "$1" ] || return 1
	done
}

round_done() { "$KUBECHECK" defrags --since "$1" --each 1 --done $(etcd_logs) >/dev/null 2>&1; }

# static_round: fragment, wait until every member was defragmented once and
# the agents have all looked again, then judge from etcd's logs: one round,
# each member once, never two at once, the leader last.
static_round() {
	local t0 s=$SECONDS leader
	leader=$(leader_node) || fail "no leader"
	t0=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
	fragment 0 160
	wait_for "a round of defrags (every member once, per etcd's logs)" 300 round_done "$t0"
	local end
	end=$(date +%s)
	wait_for "every agent's next cycle" 120 agents_cycled_after "$end"
	[ "$(leader_node)" = "$leader" ] || fail "the leader changed during the round (n$leader before)"
	"$KUBECHECK" defrags --since "$t0" --each 1 --done --leader "n$leader" $(etcd_logs) >&2 ||
		fail "the round, judged from etcd's logs"
	log "one round: each member once, none at the same time, the leader (n$leader) last ($((SECONDS - s))s)"
}

# static_checks MODE: the checks of part (b) on running nodes.
static_checks() {
	local mode=$1 i s=$SECONDS
	for i in 1 2 3; do
		wait_for "node $i: etcd and the sidecar ready" 240 pods_ok "$i" -q --ready
	done
	log "$mode: both containers of every etcd pod ready ($((SECONDS - s))s)"
	for i in 1 2 3; do pods_ok "$i" >&2; done

	# Non-root, read-only root filesystem: from the agent process itself.
	for i in 1 2 3; do
		local pid uid ro
		pid=$(sidecar_pid "$i")
		[ -n "$pid" ] || fail "node $i: no running sidecar task"
		uid=$(awk '/^Uid:/ {print $2 ":" $3}' "/proc/$pid/status")
		ro=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | cut -d, -f1)
		[ "$uid" = "65532:65532" ] || fail "node $i: the agent runs as uid $uid, want 65532"
		[ "$ro" = ro ] || fail "node $i: the agent's root filesystem is mounted $ro, want ro"
	done
	log "$mode: every agent runs as 65532 on a read-only root filesystem"

	missing_key_check 2
	static_round
	# The probes held: no container restarted (the liveness probe runs every
	# 10s and kills after 3 failures; the round took longer than that).
	for i in 1 2 3; do pods_ok "$i" -q --ready --restarts-max "$( [ "$i" = 2 ] && echo 99 || echo 0)" ||
		fail "node $i: after the round"; done
	log "$mode: no restarts on nodes 1 and 3 during the round (probes pass)"
	kill_mid_defrag
}

# missing_key_check I: without the agent's key the sidecar exits 2 naming
# the file, and etcd stays ready; with the key back it recovers.
missing_key_check() {
	local i=$1 n pki pid state
	n=$(node_dir "$i")
	pki=$n/root/etc/kubernetes/pki/etcd-defrag-agent
	mv "$pki/client.key" "$n/client.key.moved"
	pid=$(sidecar_pid "$i")
	kill -KILL "$pid"
	wait_for "node $i: the sidecar exits 2 without its key" 120 sidecar_exited_2 "$i"
	state=$(kubelet_pods "$i" | "$KUBECHECK" container --pod "etcd-n$i" --container etcd-defrag-agent)
	grep -q 'client.key' <<<"$state" || fail "node $i: the sidecar's exit does not name client.key: $state"
	pods_ok "$i" -q >/dev/null
	kubelet_pods "$i" | "$KUBECHECK" container --pod "etcd-n$i" --container etcd | grep -q '^ready=true' ||
		fail "node $i: etcd not ready while its sidecar lacks its key"
	log "missing key: the sidecar exits 2 naming the file, etcd stays ready: $(grep last_message <<<"$state")"
	mv "$n/client.key.moved" "$pki/client.key"
	wait_for "node $i: the sidecar ready again with its key" 180 pods_ok "$i" -q --ready
}
sidecar_exited_2() {
	kubelet_pods "$1" | "$KUBECHECK" container --pod "etcd-n$1" --container etcd-defrag-agent | grep -q '^last_exit="2"'
}

# kill_mid_defrag: fragment again; when a member starts to defragment (its
# own log says so), SIGKILL its sidecar's process. The kubelet restarts the
# container, the round completes, and no two defrags overlap.
kill_mid_defrag() {
	local t0 victim restarts s=$SECONDS pid killed
	t0=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
	fragment 120 240
	victim=$("$KUBECHECK" wait-defrag --since "$t0" --timeout 300s $(etcd_logs)) || fail "no defrag started"
	local i=${victim#n}
	pid=$(sidecar_pid "$i")
	kill -KILL "$pid"
	killed=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
	restarts=$(kubelet_pods "$i" | "$KUBECHECK" container --pod "etcd-n$i" --container etcd-defrag-agent | sed -n 's/^restarts=//p')
	log "killed the sidecar of $victim (pid $pid) while its member defragments"
	wait_for "node $i: the kubelet restarts the sidecar" 120 sidecar_restarted "$i" "$restarts"
	wait_for "the round after the kill (every member once)" 300 round_done "$t0"
	"$KUBECHECK" defrags --since "$t0" --each 1 --done --running-at "$victim@$killed" $(etcd_logs) >&2 ||
		fail "the round with a killed sidecar"
	log "killed mid-defrag (etcd's log: the defrag ended after the kill): restarted by the kubelet, the round completed, nothing overlapped ($((SECONDS - s))s)"
}
sidecar_restarted() {
	kubelet_pods "$1" | "$KUBECHECK" container --pod "etcd-n$1" --container etcd-defrag-agent |
		awk -F= -v want="$2" '$1 == "restarts" && $2 > want {r = 1} $1 == "ready" && $2 == "true" {ok = 1} END {exit !(r && ok)}'
}

# part_static MODE: nodes up, certificates, manifests, kubelets, checks,
# nodes down.
part_static() {
	local mode=$1 s=$SECONDS i mark=${#UNDO[@]}
	log "=== (b) kubeadm static pods, $mode kubelets"
	for i in 1 2 3; do node_up "$i"; done
	static_certs
	kubeadm_manifests
	for i in 1 2 3; do
		if [ "$mode" = registered ]; then
			agent_debug <"$(node_dir "$i")/kubeadm-etcd-patched.yaml" >"$(node_dir "$i")/root/etc/kubernetes/manifests/etcd.yaml"
		else
			agent_debug <"$(node_dir "$i")/readme-etcd.yaml" >"$(node_dir "$i")/root/etc/kubernetes/manifests/etcd.yaml"
		fi
	done
	if [ "$mode" = registered ]; then
		cp_certs
		for i in 1 2 3; do kubelet_kubeconfig "$i"; done
	fi
	for i in 1 2 3; do kubelet_up "$i" "$mode"; done
	if [ "$mode" = registered ]; then
		local p
		p=$(node_dir 1)/root/etc/kubernetes/pki
		apiserver_up "https://$(node_ip 1):2379,https://$(node_ip 2):2379,https://$(node_ip 3):2379" \
			"$p/etcd/ca.crt" "$p/apiserver-etcd-client.crt" "$p/apiserver-etcd-client.key"
		wait_for "three nodes registered" 120 nodes_registered
		wait_for "three mirror pods ready in the API" 240 mirror_pods_ready
		log "registered: nodes n1-n3 and their mirror pods etcd-n1..3 ready in the API"
	fi
	static_checks "$mode"
	nodes_down_to "$mark"
	log "=== (b) $mode: passed in $((SECONDS - s))s"
}

# nodes_down_to MARK: run the undo stack down to MARK (this part's nodes,
# kubelets, control plane), leaving the switch for the next part.
nodes_down_to() {
	local mark=$1 i
	for ((i = ${#UNDO[@]} - 1; i >= mark; i--)); do
		local t=$SECONDS
		eval "${UNDO[i]}" || log "teardown: '${UNDO[i]}' failed"
		[ $((SECONDS - t)) -lt 5 ] || log "teardown: '${UNDO[i]}' took $((SECONDS - t))s"
		unset 'UNDO[i]'
	done
	UNDO=("${UNDO[@]}")
}
