#!/usr/bin/env bash
# make soak: memory while following the head for a long time. A producer at a fast slot time
# (SOAK_SLOT_MS, default 100 ms), three followers and one `syncnode subscribe` reading the first
# follower's /blocks/stream, all on 127.0.0.1, for SOAK_MINUTES (default 60). Every minute it
# prints each node's RSS and head; at the end the least-squares slope of each node's RSS over the
# second half of the run. The producer is then stopped, and every node must hold the same head
# (height and hash), the subscriber must have reached it, no peer may be banned, and each store
# must pass `db check`. It fails when one of these does not hold or when any node's slope is above
# SOAK_MAX_SLOPE_KIB (KiB per minute, default 64: 0.1 KiB per block at 100 ms slots).
# Usage: [SOAK_MINUTES=M] [SOAK_SLOT_MS=S] [SOAK_MAX_SLOPE_KIB=K] [SOAK_DIR=DIR] scripts/soak.sh
# SOAK_DIR keeps the stores, logs and samples (default: a temporary directory, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
minutes="${SOAK_MINUTES:-60}"
slot_ms="${SOAK_SLOT_MS:-100}"
max_slope="${SOAK_MAX_SLOPE_KIB:-64}"
nodes=(producer follower1 follower2 follower3)

if [ "$minutes" -lt 4 ]; then
	echo "soak: SOAK_MINUTES must be at least 4" >&2
	exit 2
fi
"$CARGO" build --release -p syncnode
bin="$PWD/target/release/syncnode"

if [ -n "${SOAK_DIR:-}" ]; then
	root="$SOAK_DIR"
	mkdir -p "$root"
else
	root="$(mktemp -d -t syncnode-soak.XXXXXX)"
fi

# Eight free ports from a base in 47000..48999 that differs between runs: TCP then HTTP per node.
port_free() { ! ss -Htan "( sport = :$1 )" | grep -q .; }
pick_base() {
	local tries base p ok
	for tries in $(seq 1 50); do
		base=$((47000 + (RANDOM + $$ + tries * 97) % 1990))
		ok=1
		for p in $(seq "$base" $((base + 7))); do port_free "$p" || ok=0; done
		if [ "$ok" = 1 ]; then
			echo "$base"
			return 0
		fi
	done
	return 1
}
base="$(pick_base)" || { echo "soak: no free ports" >&2; exit 1; }
tcp_port() { echo $((base + $1)); }
http_addr() { echo "127.0.0.1:$((base + 4 + $1))"; }

pids=()
sub_pid=""
cleanup() {
	local pid
	[ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -z "${SOAK_DIR:-}" ]; then rm -rf "$root"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin" chain spec --name soak --authorities 1 --slot-ms "$slot_ms" >"$root/spec.json"
start_node() {
	local i="$1" extra=()
	if [ "$i" = 0 ]; then
		extra=(--produce --dev-key 0)
	else
		extra=(--bootnode "/ip4/127.0.0.1/tcp/$(tcp_port 0)")
	fi
	"$bin" run --chain "$root/spec.json" --data-dir "$root/${nodes[$i]}" \
		--listen "/ip4/127.0.0.1/tcp/$(tcp_port "$i")" --http "$(http_addr "$i")" \
		"${extra[@]}" >"$root/${nodes[$i]}.log" 2>&1 &
	pids[i]=$!
}
for i in 0 1 2 3; do start_node "$i"; done

status_field() { # status_field NODE FIELD: a field of /status ("" when the node does not answer)
	curl -sf --max-time 5 "http://$(http_addr "$1")/status" |
		sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" || true
}
until [ -n "$(status_field 1 head_height)" ]; do sleep 0.5; done
"$bin" subscribe --http "$(http_addr 1)" --cursor-file "$root/cursor" >/dev/null 2>"$root/subscriber.log" &
sub_pid=$!

echo "soak: ${#nodes[@]} nodes in $root, slot $slot_ms ms, $minutes min, ports from $base" >&2
samples="$root/rss.tsv"
printf 'minute' | tee "$samples"
for n in "${nodes[@]}"; do printf '\t%s_rss_kib' "$n"; done | tee -a "$samples"
for n in "${nodes[@]}"; do printf '\t%s_head' "$n"; done | tee -a "$samples"
printf '\tsubscriber\n' | tee -a "$samples"
t0=$SECONDS
for m in $(seq 1 "$minutes"); do
	sleep $((t0 + m * 60 - SECONDS))
	line="$m"
	for i in 0 1 2 3; do
		rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/${pids[$i]}/status" 2>/dev/null || true)
		[ -n "$rss" ] || { echo "soak: ${nodes[$i]} is gone; see $root/${nodes[$i]}.log" >&2; exit 1; }
		line+=$'\t'"$rss"
	done
	for i in 0 1 2 3; do line+=$'\t'"$(status_field "$i" head_height)"; done
	line+=$'\t'"$(cat "$root/cursor" 2>/dev/null || echo -)"
	echo "$line" | tee -a "$samples"
done

# The slope of each RSS column over the second half, by least squares, in KiB per minute.
slopes=$(awk -F'\t' -v from=$((minutes / 2)) -v n=${#nodes[@]} '
	NR > 1 && $1 > from {
		k++; sx += $1; sxx += $1 * $1
		for (c = 2; c <= n + 1; c++) { sy[c] += $c; sxy[c] += $1 * $c }
	}
	END {
		for (c = 2; c <= n + 1; c++) printf "%.1f ", (k * sxy[c] - sx * sy[c]) / (k * sxx - sx * sx)
		print ""
	}' "$samples")
read -r -a slope <<<"$slopes"

fail=0
echo "RSS slope over minutes $((minutes / 2 + 1))..$minutes (bound $max_slope KiB/min):"
for i in 0 1 2 3; do
	verdict=ok
	if awk -v s="${slope[$i]}" -v b="$max_slope" 'BEGIN { exit !(s > b) }'; then verdict=ABOVE; fail=1; fi
	echo "  ${nodes[$i]}: ${slope[$i]} KiB/min $verdict"
done

# Heads: stop producing (a block made while stopping may not have been gossiped), restart the
# producer as a plain node that dials a follower, and wait up to 90 s for every node to hold the
# same head and the subscriber to reach it; no node may have banned a peer; every store must then
# pass `db check`.
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
"$bin" run --chain "$root/spec.json" --data-dir "$root/producer" \
	--listen "/ip4/127.0.0.1/tcp/$(tcp_port 0)" --http "$(http_addr 0)" \
	--bootnode "/ip4/127.0.0.1/tcp/$(tcp_port 1)" >>"$root/producer.log" 2>&1 &
pids[0]=$!
settled=0
for _ in $(seq 1 90); do
	sleep 1
	heads=()
	for i in 0 1 2 3; do heads+=("$(status_field "$i" head_height):$(status_field "$i" head_hash)"); done
	cursor=$(cat "$root/cursor" 2>/dev/null || echo none)
	if [ "${heads[1]}" = "${heads[0]}" ] && [ "${heads[2]}" = "${heads[0]}" ] &&
		[ "${heads[3]}" = "${heads[0]}" ] && [ "$cursor" = "${heads[0]%%:*}" ]; then
		settled=1
		break
	fi
done
echo "heads (height:hash): ${heads[*]}"
echo "subscriber at $cursor"
[ "$settled" = 1 ] || { echo "  heads differ, or the subscriber is behind, after 90 s"; fail=1; }
for i in 0 1 2 3; do
	if curl -sf --max-time 5 "http://$(http_addr "$i")/peers" | grep -q '"banned":true'; then
		echo "  ${nodes[$i]} has banned a peer"
		fail=1
	fi
done
kill "$sub_pid" 2>/dev/null || true
for i in 0 1 2 3; do kill "${pids[$i]}" 2>/dev/null || true; done
wait 2>/dev/null || true
for i in 0 1 2 3; do
	check=$("$bin" db check --data-dir "$root/${nodes[$i]}" 2>&1) ||
		{ echo "  db check of ${nodes[$i]} failed: $check"; fail=1; }
done
if [ "$fail" = 0 ]; then echo "soak: ok"; else echo "soak: FAILED (samples and logs: $root)"; fi
exit "$fail"
