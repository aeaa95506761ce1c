# shellcheck shell=bash
# The kamaji-etcd values that depend on etcd's line: each file's extraArgs
# start the etcd lines it is for and are refused by the others (etcd 3.7
# removed --experimental-stop-grpc-service-on-defrag; 3.5 has no
# --feature-gates). etcd 3.5, 3.6 and 3.7 come from test/e2e's cache (built
# there when missing).

# etcd_starts DIR ARGS...: 0 when etcd answers /health with ARGS, 1 when it
# exits; the output names which.
etcd_starts() {
	local dir=$1 d
	shift
	d=$(mktemp -d "$W/etcd-flags.XXXXXX")
	spawn_in_ns cp "$dir/etcd" --name f --data-dir "$d/data" \
		--listen-client-urls http://127.0.0.1:22379 --advertise-client-urls http://127.0.0.1:22379 \
		--listen-peer-urls http://127.0.0.1:22380 --initial-advertise-peer-urls http://127.0.0.1:22380 \
		--initial-cluster f=http://127.0.0.1:22380 "$@" >"$d/etcd.log" 2>&1 &
	local pid=$! deadline=$((SECONDS + 30))
	while [ $SECONDS -lt $deadline ]; do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid" 2>/dev/null
			ETCD_STARTS_OUT=$(tail -3 "$d/etcd.log")
			return 1
		fi
		if in_ns cp curl -sf http://127.0.0.1:22379/health >/dev/null 2>&1; then
			stop_pid "$pid" 20
			return 0
		fi
		sleep 0.2
	done
	stop_pid "$pid" 20
	fail "etcd in $dir neither answered nor exited within 30s: $(tail -3 "$d/etcd.log")"
}

part_kamaji() {
	local s=$SECONDS rel line f arg want got
	log "=== kamaji-etcd values on etcd 3.5, 3.6, 3.7"
	for rel in v3.5.35 v3.6.16 v3.7.3; do
		line=${rel#v}
		line=${line%.*}
		local dir
		dir=$("$HERE/build.sh" "etcd=$rel" | sed -n 's/^etcd=//p')
		for f in "$REPO"/manifests/statefulset/kamaji-etcd/helm-values-etcd-*.yaml; do
			arg=$(sed -n 's/^- \(--.*\)$/\1/p' "$f")
			[ -n "$arg" ] || fail "$f: no extraArgs"
			# helm-values-etcd-3.5.yaml is for 3.5 and 3.6; -3.6.yaml for 3.6 and 3.7.
			case "$(basename "$f"):$line" in
			*3.5.yaml:3.5 | *3.5.yaml:3.6 | *3.6.yaml:3.6 | *3.6.yaml:3.7) want=starts ;;
			*) want=refused ;;
			esac
			if etcd_starts "$dir" "$arg"; then got=starts; else got=refused; fi
			[ "$got" = "$want" ] || fail "etcd $rel with $arg ($(basename "$f")): $got, want $want ${ETCD_STARTS_OUT:-}"
			log "etcd $rel, $(basename "$f") ($arg): $got"
		done
	done
	log "=== kamaji-etcd values passed in $((SECONDS - s))s"
}
