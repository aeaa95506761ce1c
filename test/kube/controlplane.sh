# shellcheck shell=bash
# The control plane, in the switch's "cp" namespace at $SUBNET.2: its
# certificates and kubeconfigs made by kubeadm's phases (--cert-dir,
# --kubeconfig-dir), kube-apiserver, kube-controller-manager, kube-scheduler
# and cluster DNS as processes.

CP=""       # $W/cp
CP_ADDR=$SUBNET.2

# cp_config NODE ADDRESS: kubeadm's configuration for the control plane's
# certificates and kubeconfigs (certificatesDir: kubeadm refuses --cert-dir
# next to --config), as NODE at ADDRESS.
cp_config() {
	cat <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: $2
nodeRegistration:
  name: $1
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $K8S_VERSION
clusterName: kube-e2e
certificatesDir: $CP/pki
controlPlaneEndpoint: $CP_ADDR:6443
networking:
  serviceSubnet: 10.96.0.0/16
  podSubnet: $POD_SUBNET.0.0/16
  dnsDomain: cluster.local
YAML
}

cp_certs() {
	CP=$W/cp
	[ -d "$CP" ] && mv "$CP" "$CP.$(date +%H%M%S)"
	mkdir -p "$CP/pki"
	cp_config cp "$CP_ADDR" >"$CP/kubeadm.yaml"
	local c
	for c in ca apiserver apiserver-kubelet-client sa front-proxy-ca front-proxy-client; do
		"$KUBE_BIN/kubeadm" init phase certs "$c" --config "$CP/kubeadm.yaml" >"$CP/kubeadm-certs.log" 2>&1 ||
			{ cat "$CP/kubeadm-certs.log" >&2; fail "kubeadm init phase certs $c"; }
	done
	for c in super-admin controller-manager scheduler; do
		"$KUBE_BIN/kubeadm" init phase kubeconfig "$c" --config "$CP/kubeadm.yaml" \
			--kubeconfig-dir "$CP" >"$CP/kubeadm-kubeconfig.log" 2>&1 ||
			{ cat "$CP/kubeadm-kubeconfig.log" >&2; fail "kubeadm init phase kubeconfig $c"; }
	done
}

# kubelet_kubeconfig I: node I's kubelet.conf (user system:node:nI, group
# system:nodes), by kubeadm's kubeconfig phase, as $W/kubeconfig-nI.
kubelet_kubeconfig() {
	local i=$1 d
	d=$(node_dir "$i")/kubeconfig
	mkdir -p "$d"
	cp_config "n$i" "$(node_ip "$i")" >"$d/kubeadm.yaml"
	"$KUBE_BIN/kubeadm" init phase kubeconfig kubelet --config "$d/kubeadm.yaml" \
		--kubeconfig-dir "$d" >"$d/kubeadm.log" 2>&1 || { cat "$d/kubeadm.log" >&2; fail "kubeadm init phase kubeconfig kubelet (node $i)"; }
	# kubeadm points a control-plane node's kubelet at the API server on the
	# node itself (ControlPlaneKubeletLocalMode); here it runs on $CP_ADDR.
	sed "s#server: https://.*#server: https://$CP_ADDR:6443#" "$d/kubelet.conf" >"$W/kubeconfig-n$i"
}

kc() { in_ns cp "$KUBE_BIN/kubectl" --kubeconfig "$CP/super-admin.conf" "$@"; }

# apiserver_up ETCD_SERVERS ETCD_CA ETCD_CERT ETCD_KEY
apiserver_up() {
	local p=$CP/pki
	spawn_in_ns cp "$KUBE_BIN/kube-apiserver" \
		--advertise-address="$CP_ADDR" --bind-address="$CP_ADDR" --secure-port=6443 \
		--etcd-servers="$1" --etcd-cafile="$2" --etcd-certfile="$3" --etcd-keyfile="$4" \
		--client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
		--kubelet-client-certificate="$p/apiserver-kubelet-client.crt" --kubelet-client-key="$p/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
		--service-cluster-ip-range=10.96.0.0/16 \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
		--requestheader-client-ca-file="$p/front-proxy-ca.crt" --proxy-client-cert-file="$p/front-proxy-client.crt" \
		--proxy-client-key-file="$p/front-proxy-client.key" --requestheader-allowed-names=front-proxy-client \
		--requestheader-extra-headers-prefix=X-Remote-Extra- --requestheader-group-headers=X-Remote-Group \
		--requestheader-username-headers=X-Remote-User \
		--profiling=false --v=1 >"$CP/kube-apiserver.log" 2>&1 &
	local pid=$!
	# It drains its watches for up to a minute on SIGTERM; nothing needs that here.
	undo_push "stop_pid $pid 10"
	wait_for "kube-apiserver /readyz" 180 kc get --raw /readyz
	log "kube-apiserver ready"
}

controllers_up() {
	local p=$CP/pki
	spawn_in_ns cp "$KUBE_BIN/kube-controller-manager" --kubeconfig="$CP/controller-manager.conf" \
		--authentication-kubeconfig="$CP/controller-manager.conf" --authorization-kubeconfig="$CP/controller-manager.conf" \
		--bind-address=127.0.0.1 --client-ca-file="$p/ca.crt" --cluster-name=kube-e2e \
		--cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
		--root-ca-file="$p/ca.crt" --service-account-private-key-file="$p/sa.key" \
		--use-service-account-credentials=true --controllers='*,bootstrapsigner,tokencleaner' \
		--leader-elect=false --v=1 >"$CP/kube-controller-manager.log" 2>&1 &
	undo_push "stop_pid $! 30"
	spawn_in_ns cp "$KUBE_BIN/kube-scheduler" --kubeconfig="$CP/scheduler.conf" \
		--authentication-kubeconfig="$CP/scheduler.conf" --authorization-kubeconfig="$CP/scheduler.conf" \
		--bind-address=127.0.0.1 --leader-elect=false --v=1 >"$CP/kube-scheduler.log" 2>&1 &
	undo_push "stop_pid $! 30"
	wait_for "kube-controller-manager /healthz" 120 in_ns cp curl -sfk https://127.0.0.1:10257/healthz -o /dev/null
	wait_for "kube-scheduler /healthz" 120 in_ns cp curl -sfk https://127.0.0.1:10259/healthz -o /dev/null
	log "kube-controller-manager and kube-scheduler up"
}

nodes_registered() {
	[ "$(kc get nodes -o name 2>/dev/null | wc -l)" = 3 ]
}
mirror_pods_ready() {
	kc -n kube-system get pods -o json 2>/dev/null | "$KUBECHECK" pods -q --ready etcd-n1 etcd-n2 etcd-n3 2>/dev/null
}
