# shellcheck shell=bash
# Part (d), live: the Prometheus server with the shipped alerting rules,
# scraping the StatefulSet of part (c) the way the PodMonitor selects the
# agents (its scrape configuration generated from podmonitor.yaml as the
# Prometheus Operator would), plus etcd's own metrics port of the same pods.

PROM_URL=http://$SUBNET.2:9090
PROM_START=""

# prometheus_up: started right after the StatefulSet is ready, so that the
# rounds of part (c) are in its data.
prometheus_up() {
	local d=$CP/prometheus
	mkdir -p "$d"
	"$KUBECHECK" rulefile "$REPO/manifests/monitoring/prometheusrule.yaml" >"$d/rules.yaml"
	{
		printf 'global:\n  scrape_interval: 30s\n  evaluation_interval: 15s\nrule_files: [%s/rules.yaml]\n' "$d"
		"$KUBECHECK" podmonitor --kubeconfig "$CP/super-admin.conf" --job-port etcd-metrics --job-name etcd \
			"$REPO/manifests/monitoring/podmonitor.yaml"
	} >"$d/prometheus.yml"
	"$PROM_DIR/promtool" check config "$d/prometheus.yml" >"$d/check.log" 2>&1 || { cat "$d/check.log" >&2; fail "promtool check config"; }
	spawn_in_ns cp "$PROM_DIR/prometheus" --config.file="$d/prometheus.yml" --storage.tsdb.path="$d/data" \
		--web.listen-address="$SUBNET.2:9090" >"$d/prometheus.log" 2>&1 &
	undo_push "stop_pid $! 30"
	wait_for "Prometheus ready" 60 in_ns cp curl -sf "$PROM_URL/-/ready"
	PROM_START=$SECONDS
	log "prometheus: up, scraping by the PodMonitor's selection (config: prometheus/prometheus.yml)"
}

prom() { in_ns cp "$KUBECHECK" prom --url "$PROM_URL" "$@"; }
prom_has() { prom --min "$2" "$1" >/dev/null 2>&1; }
prom_none() { prom --max 0 "$1" >/dev/null 2>&1; }

# quota_overlay BYTES: the user's own overlay of the base (the README's way
# to change it), with etcd's quota lowered so that NOSPACE is quick to reach.
quota_overlay() {
	local d=$W/overlay idx
	mkdir -p "$d"
	idx=$("$KUBE_BIN/kubectl" kustomize "$REPO/manifests/statefulset/base" |
		awk '/^      - command:/ {c = 1; i = -1; next} c && /^        - / {i++; if ($2 ~ /^--quota-backend-bytes=/) {print i; exit}}')
	[ -n "$idx" ] || fail "the base's etcd has no --quota-backend-bytes"
	cat >"$d/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $NS
resources:
- $(realpath --relative-to="$d" "$REPO/manifests/statefulset/base")
patches:
- target: {kind: StatefulSet, name: etcd}
  patch: |-
    - op: replace
      path: /spec/template/spec/containers/0/command/$idx
      value: --quota-backend-bytes=$1
YAML
	kc apply -k "$d" >&2
	in_ns cp "$KUBE_BIN/kubectl" --kubeconfig "$CP/super-admin.conf" -n "$NS" rollout status statefulset etcd --timeout 600s >&2 ||
		fail "rollout of the quota overlay"
	wait_for "3 pods ready with the new quota" 300 sts_pods_ready
}

nospace_raised() { sts_etcdctl alarm list | grep -q NOSPACE; }
nospace_cleared() { local a; a=$(sts_etcdctl alarm list) && ! grep -q NOSPACE <<<"$a"; }
lock_held() { grep -q '^/etcd-defrag-agent/lock/' "$W/etcdctl-lock.log"; }

part_prometheus() {
	local s=$SECONDS k=0 out eps lockpid d=$W/statefulset-user
	log "=== (d) Prometheus, live"
	quota_overlay $((64 * 1024 * 1024))
	log "prometheus: the StatefulSet runs with a 64 MiB quota (an overlay of the base)"
	# The agents bring a cluster back from NOSPACE within a second of their
	# next cycle, faster than an alert with "for: 1m" can fire. So the
	# operator pauses them first, as the README says (etcdctl lock on their
	# lock: under NOSPACE the agent at the head of the queue waits while
	# anyone holds it), then releases them.
	eps=$(kc -n "$NS" get pods -o jsonpath='{range .items[*]}https://{.status.podIP}:2379,{end}')
	(exec nsenter --net="/run/netns/$KE2E_PREFIX-cp" -- "$ETCD_DIR/etcdctl" --endpoints "${eps%,}" \
		--cacert "$d/ca.crt" --cert "$d/agent.crt" --key "$d/agent.key" --insecure-skip-tls-verify \
		lock /etcd-defrag-agent/lock) >"$W/etcdctl-lock.log" 2>&1 &
	lockpid=$!
	undo_push "stop_pid $lockpid 10"
	wait_for "etcdctl lock /etcd-defrag-agent/lock" 60 lock_held
	log "prometheus: the agents paused (etcdctl lock /etcd-defrag-agent/lock)"
	head -c $((768 * 1024 - 48)) /dev/urandom | base64 -w0 >"$W/blob"
	while ! nospace_raised; do
		out=$(sts_etcdctl put "/kube-e2e/nospace/$k" <"$W/blob" 2>&1) || grep -q 'space exceeded' <<<"$out" ||
			fail "put: $out"
		k=$((k + 1))
		[ $k -lt 200 ] || fail "no NOSPACE after 200 MiB against a 64 MiB quota"
	done
	log "prometheus: NOSPACE raised after $k MiB"
	wait_for "EtcdNoSpace firing" 300 prom_has 'ALERTS{alertname="EtcdNoSpace",alertstate="firing",namespace="etcd"}' 1
	nospace_raised || fail "NOSPACE went away while the agents were paused"
	log "prometheus: EtcdNoSpace fires"
	# Where the fill stops depends on how bbolt grew its file: the data in
	# use may itself be above --disalarm-threshold (90 %), and then the
	# agents rightly refuse (nospace_unrecoverable). Make room as an
	# operator would: delete a third of it (etcd takes deletes under
	# NOSPACE); the agents' second pass compacts it away.
	local i
	for ((i = 0; i < k / 3; i++)); do
		out=$(sts_etcdctl del "/kube-e2e/nospace/$i" 2>&1) || fail "delete under NOSPACE: $out"
	done
	log "prometheus: deleted $((k / 3)) of the $k MiB written (etcd takes deletes under NOSPACE)"
	stop_pid "$lockpid" 10
	log "prometheus: the agents released (etcdctl lock stopped)"
	wait_for "the agents disarm NOSPACE" 300 nospace_cleared
	wait_for "a NOSPACE recovery in the agents' metrics" 120 prom_has \
		'sum(etcd_defrag_agent_nospace_recoveries_total{job="etcd-defrag-agent",namespace="etcd",result="success"}) > 0' 1
	log "prometheus: the agents recovered the cluster from NOSPACE (nospace_recoveries_total{result=\"success\"})"
	wait_for "EtcdNoSpace resolved" 300 prom_none 'ALERTS{alertname="EtcdNoSpace"}'
	log "prometheus: EtcdNoSpace resolved"
	sts_etcdctl del --prefix /kube-e2e/nospace/ >/dev/null

	# The agents' and etcd's up series, one per member.
	wait_for "up of every agent" 120 prom_has 'up{job="etcd-defrag-agent",namespace="etcd",pod=~"etcd-[012]"} == 1' 3
	wait_for "up of every etcd member" 120 prom_has 'up{job="etcd",namespace="etcd",pod=~"etcd-[012]"} == 1' 3
	prom 'up{job="etcd-defrag-agent",namespace="etcd",pod=~"etcd-[012]"} == 1' >/dev/null
	log "prometheus: up{job=\"etcd-defrag-agent\"} and up{job=\"etcd\"} == 1 for etcd-0, etcd-1, etcd-2"

	in_ns cp "$KUBECHECK" dashboard --url "$PROM_URL" --range "$((SECONDS - PROM_START + 60))s" \
		"$REPO/manifests/monitoring/grafana-dashboard.json" >&2 || fail "a dashboard panel without data"
	log "=== (d) passed in $((SECONDS - s))s"
}
