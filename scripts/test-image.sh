#!/usr/bin/env bash
# Builds the container image around bin/etcd-defrag-agent (make build) and runs it:
#
#   - the image runs as 65532:65532, has no shell, and starts /etcd-defrag-agent;
#   - --version prints VERSION;
#   - --check-config accepts a real configuration (a config file, certificates,
#     a web configuration with TLS and basic auth, flags) mounted read-only, and
#     rejects an unknown flag and a missing certificate with exit code 2;
#   - the daemon runs as a non-root user on a read-only root filesystem with every
#     capability dropped: /healthz answers 200, /readyz 503 (no etcd here), and
#     SIGTERM stops it with exit code 0.
#
# It uses the Docker engine that answers (DOCKER_HOST, or the default socket). If
# none does, it installs Debian's docker.io when dockerd is missing (as root), and
# starts a private dockerd (its own socket, data and exec directories, no bridge,
# no iptables rules) that it stops and removes at the end. It always removes the
# containers and the image it created; it never touches anything else.
#
# Usage: scripts/test-image.sh   (make test-image builds the binary first)
# Environment: VERSION (the version make build stamped; checked when set),
#              IMAGE (repository name, default etcd-defrag-agent).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-etcd-defrag-agent}"
ref="$IMAGE:test-$$"            # a tag of our own: cleanup never removes a user's image
label="etcd-defrag-agent-test=$$"
binary=bin/etcd-defrag-agent

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/etcd-defrag-agent-image-test.XXXXXX")
dockerd_pid=""
image_built=""

log() { printf 'test-image: %s\n' "$*"; }
fail() { printf 'test-image: FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
	local rc=$?
	set +e
	if docker info >/dev/null 2>&1; then
		local ids
		ids=$(docker ps -aq --filter "label=$label")
		[ -n "$ids" ] && docker rm -f $ids >/dev/null
		[ -n "$image_built" ] && docker rmi -f "$ref" >/dev/null
	fi
	if [ -n "$dockerd_pid" ]; then
		kill -TERM "$dockerd_pid" 2>/dev/null
		for _ in $(seq 1 100); do
			kill -0 "$dockerd_pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$dockerd_pid" 2>/dev/null; then
			log "dockerd did not stop in 20s; killing it"
			kill -KILL "$dockerd_pid" 2>/dev/null
		fi
		wait "$dockerd_pid" 2>/dev/null
		# dockerd leaves its default network namespace mounted in its exec root.
		awk -v dir="$work/" 'index($2, dir) == 1 {print $2}' /proc/self/mounts | sort -r |
			while read -r m; do umount "$m"; done
		log "stopped the private dockerd"
	fi
	rm -rf "$work" 2>/dev/null || log "could not remove $work entirely"
	if [ "$rc" -eq 0 ]; then
		log "ok ($(( $(date +%s) - start ))s)"
	else
		log "failed ($(( $(date +%s) - start ))s)"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$binary" ] || fail "$binary is missing: run make build (or make test-image)"

# --- A Docker engine -------------------------------------------------------------
if docker info >/dev/null 2>&1; then
	log "using the Docker engine at ${DOCKER_HOST:-the default socket}"
else
	if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
		[ "$(id -u)" -eq 0 ] || fail "no Docker engine answers and dockerd is not installed (install docker.io, or run as root)"
		log "installing docker.io"
		if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } >"$work/apt.log" 2>&1; then
			cat "$work/apt.log" >&2
			fail "apt-get install docker.io failed"
		fi
	fi
	[ "$(id -u)" -eq 0 ] || fail "no Docker engine answers, and starting one needs root"
	mkdir -p "$work/dockerd"
	log "starting a private dockerd in $work/dockerd"
	dockerd --host "unix://$work/dockerd/docker.sock" \
		--data-root "$work/dockerd/data" --exec-root "$work/dockerd/exec" \
		--pidfile "$work/dockerd/docker.pid" \
		--bridge none --iptables=false --ip-masq=false \
		>"$work/dockerd/dockerd.log" 2>&1 &
	dockerd_pid=$!
	export DOCKER_HOST="unix://$work/dockerd/docker.sock"
	deadline=$(( $(date +%s) + 60 ))
	until docker info >/dev/null 2>&1; do
		if ! kill -0 "$dockerd_pid" 2>/dev/null; then
			tail -20 "$work/dockerd/dockerd.log" >&2
			dockerd_pid=""
			fail "dockerd exited"
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			tail -20 "$work/dockerd/dockerd.log" >&2
			fail "dockerd did not answer within 60s"
		fi
		sleep 0.2
	done
	log "dockerd answers ($(( $(date +%s) - start ))s)"
fi

# --- Build ---------------------------------------------------------------------
want_version="${VERSION:-}"
[ -n "$want_version" ] || want_version=$("$binary" --version | awk '{print $2}')
docker build --quiet --build-arg "VERSION=$want_version" -t "$ref" . >/dev/null
image_built=1
log "built $ref"

cfg=$(docker image inspect "$ref" --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{index .Config.Labels "org.opencontainers.image.version"}}')
[ "$cfg" = "65532:65532|[\"/etcd-defrag-agent\"]|$want_version" ] ||
	fail "image configuration is $cfg, want 65532:65532|[\"/etcd-defrag-agent\"]|$want_version"

# Every container below: non-root (the image's user), read-only root
# filesystem, no capabilities, no privilege escalation.
hardened=(--label "$label" --read-only --cap-drop ALL --security-opt no-new-privileges)

if docker run --rm "${hardened[@]}" --network none --entrypoint /bin/sh "$ref" -c true >/dev/null 2>&1; then
	fail "the image has a shell"
fi

got=$(docker run --rm "${hardened[@]}" --network none "$ref" --version)
[ "$got" = "etcd-defrag-agent $want_version" ] || fail "--version printed '$got', want 'etcd-defrag-agent $want_version'"
log "--version: $got"

# --- --check-config with real files --------------------------------------------
command -v openssl >/dev/null 2>&1 || fail "openssl is needed to make test certificates"
pki="$work/pki"
mkdir -p "$pki"
(
	cd "$pki"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=test-etcd-ca -keyout ca.key -out ca.crt 2>/dev/null
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-subj /CN=etcd-defrag-agent -keyout client.key -out client.csr 2>/dev/null
	printf 'extendedKeyUsage=clientAuth\n' >client.ext
	openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
		-extfile client.ext -out client.crt 2>/dev/null
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 -keyout web.key -out web.crt 2>/dev/null
	rm -f ca.key ca.srl client.csr client.ext
)
# The exporter-toolkit format; the hash is bcrypt of "secret".
cat >"$pki/web.yml" <<'EOF'
tls_server_config:
  cert_file: /etc/etcd-defrag-agent/pki/web.crt
  key_file: /etc/etcd-defrag-agent/pki/web.key
basic_auth_users:
  prometheus: $2a$10$4ZppXcse.7rzwBB0SeoWQ.7vKvMHKoaeFl0dbQF/lLwbrJT/z3tjm
EOF
cat >"$pki/agent.yaml" <<'EOF'
endpoints: [https://127.0.0.1:2379]
cacert: /etc/etcd-defrag-agent/pki/ca.crt
cert: /etc/etcd-defrag-agent/pki/client.crt
key: /etc/etcd-defrag-agent/pki/client.key
schedule: "@every 1m"
log:
  format: json
EOF
if [ "$(id -u)" -eq 0 ]; then
	chown -R 65532:65532 "$pki"
	chmod 0400 "$pki"/*.key
else
	chmod a+r "$pki"/*
fi
chmod 0755 "$pki"
mount=(-v "$pki:/etc/etcd-defrag-agent/pki:ro")

out=$(docker run --rm "${hardened[@]}" "${mount[@]}" --network none "$ref" \
	--check-config --config /etc/etcd-defrag-agent/pki/agent.yaml \
	--web.config.file /etc/etcd-defrag-agent/pki/web.yml \
	--defrag-rule 'dbQuotaUsage > 0.8 && dbSizeFree > 0.1*dbQuota' \
	--etcd-storage-quota-bytes 8589934592 --defrag-timeout 5m --web.listen-address :9479 2>&1) ||
	fail "--check-config with a valid configuration: $out"
[ "$out" = "configuration is valid" ] || fail "--check-config printed '$out'"
log "--check-config: $out"

expect_usage_error() {
	local what=$1 want=$2
	shift 2
	local rc=0 out
	out=$(docker run --rm "${hardened[@]}" "${mount[@]}" --network none "$ref" --check-config "$@" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || fail "$what: exit code $rc, want 2; output: $out"
	case "$out" in
	*"$want"*) log "$what: exit 2 ($want)" ;;
	*) fail "$what: output does not name '$want': $out" ;;
	esac
}
expect_usage_error "unknown flag" "unknown flag: --defrag-rulez" --defrag-rulez true
expect_usage_error "missing certificate" "/etc/etcd-defrag-agent/pki/nope.crt" \
	--config /etc/etcd-defrag-agent/pki/agent.yaml --cacert /etc/etcd-defrag-agent/pki/nope.crt

# --- The daemon: non-root, read-only root filesystem ---------------------------
# A free loopback port: nothing answers on it.
port=""
for _ in $(seq 1 50); do
	p=$(( 20000 + RANDOM % 40000 ))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		port=$p
		break
	fi
done
[ -n "$port" ] || fail "no free port"

http_status() { # path -> HTTP status code, or 000
	local line
	if ! exec 3<>"/dev/tcp/127.0.0.1/$port"; then
		echo 000
		return
	fi 2>/dev/null
	printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
	# /readyz asks etcd (dial and command timeouts): give it time.
	read -r -t 20 line <&3 || line=""
	exec 3<&- 3>&-
	line=${line%$'\r'}
	echo "${line:9:3}"
}

cid=$(docker run -d "${hardened[@]}" --network host "$ref" \
	--endpoints 127.0.0.1:1 --web.listen-address "127.0.0.1:$port" --schedule '@every 1h')
deadline=$(( $(date +%s) + 30 ))
until [ "$(http_status /healthz)" = 200 ]; do
	if [ "$(docker inspect -f '{{.State.Running}}' "$cid")" != true ]; then
		docker logs "$cid" >&2
		fail "the daemon exited on a read-only root filesystem"
	fi
	[ "$(date +%s)" -lt "$deadline" ] || { docker logs "$cid" >&2; fail "/healthz did not answer 200 within 30s"; }
	sleep 0.2
done
log "/healthz: 200"
got=$(http_status /readyz)
[ "$got" = 503 ] || fail "/readyz answered $got, want 503 (no etcd)"
log "/readyz: 503 without etcd"

uids=$(docker top "$cid" -o pid,uid,gid | awk 'NR > 1 {print $2 ":" $3}' | sort -u)
[ "$uids" = "65532:65532" ] || fail "the daemon runs as $uids, want 65532:65532"
ro=$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}' "$cid")
[ "$ro" = "true 65532:65532" ] || fail "container settings: $ro"
log "the daemon runs as 65532:65532 on a read-only root filesystem"

docker stop --time 20 "$cid" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$cid")
[ "$code" = 0 ] || { docker logs "$cid" >&2; fail "exit code after SIGTERM $code, want 0"; }
log "SIGTERM: exit code 0"
