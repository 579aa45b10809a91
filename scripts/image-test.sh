#!/usr/bin/env bash
# make image-test: builds the image, then runs a seeder and two nodes from it (host network,
# 127.0.0.1 only) and checks that the image is what it says (static, not root, a volume, the
# ports, a health check), that the nodes sync from the seeder and turn healthy, and that
# `docker stop` ends each with exit code 0 within the grace period. Removes its containers and
# volumes whatever happens. IMAGE_TEST_BLOCKS sizes the seeder's chain (default 5,000).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-syncnode:dev}
BLOCKS=${IMAGE_TEST_BLOCKS:-5000}
GRACE=30
PREFIX="syncnode-image-test-$$"
NODES=(seeder a b)

work=$(mktemp -d /tmp/syncnode-image-test.XXXXXX)
chmod 755 "$work"
cleanup() {
    for n in "${NODES[@]}"; do
        docker rm -f "$PREFIX-$n" >/dev/null 2>&1 || true
        docker volume rm "$PREFIX-$n" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "image-test: FAIL: $*" >&2
    for n in "${NODES[@]}"; do
        echo "--- $PREFIX-$n (last 15 lines)" >&2
        docker logs --tail 15 "$PREFIX-$n" 2>&1 | cut -c1-240 >&2 || true
    done
    exit 1
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

./scripts/image.sh
echo "image-test: $(docker image inspect "$IMAGE" --format \
    'user={{.Config.User}} volumes={{json .Config.Volumes}} ports={{json .Config.ExposedPorts}} health={{json .Config.Healthcheck.Test}}')"
[ "$(docker image inspect "$IMAGE" --format '{{.Config.User}}')" = "10001:10001" ] || fail "the image runs as root"
docker image inspect "$IMAGE" --format '{{json .Config.Volumes}}' | grep -q '"/data"' || fail "no /data volume"

genesis_ms=$(( ($(date +%s) - BLOCKS - 60) * 1000 ))
docker run --rm --network none "$IMAGE" chain spec --name image-test --authorities 1 \
    --genesis-timestamp-ms "$genesis_ms" > "$work/chain.json"
chmod 644 "$work/chain.json"
for n in "${NODES[@]}"; do docker volume create "$PREFIX-$n" >/dev/null; done
docker run --rm --network none -v "$PREFIX-seeder:/data" -v "$work/chain.json:/chain.json:ro" "$IMAGE" \
    chain generate --chain /chain.json --data-dir /data --blocks "$BLOCKS" --payload-bytes 256 >/dev/null

declare -A HTTP
start() { # name, then extra flags of `run`
    local name=$1 http p2p
    shift
    http=$(free_port)
    p2p=$(free_port)
    HTTP[$name]=$http
    docker run -d --name "$PREFIX-$name" --network host --stop-timeout "$GRACE" \
        -e SYNCNODE_HTTP="127.0.0.1:$http" \
        -v "$PREFIX-$name:/data" -v "$work/chain.json:/chain.json:ro" "$IMAGE" \
        run --data-dir /data --chain /chain.json --listen "/ip4/127.0.0.1/tcp/$p2p" \
        --http "127.0.0.1:$http" "$@" >/dev/null
    echo "/ip4/127.0.0.1/tcp/$p2p"
}
status() { curl -sf "http://127.0.0.1:${HTTP[$1]}/status"; }

seeder=$(start seeder)
start a --bootnode "$seeder" >/dev/null
start b --bootnode "$seeder" >/dev/null
started=$(date +%s)

deadline=$(( started + 180 ))
for n in a b; do
    until status "$n" 2>/dev/null | jq -e ".sync_state == \"synced\" and .head_height == $BLOCKS" >/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "node $n not synced to $BLOCKS: $(status "$n" || true)"
        sleep 1
    done
    echo "image-test: node $n synced to $BLOCKS after $(( $(date +%s) - started )) s: $(status "$n" | jq -c '{sync_state, head_height, peers}')"
done
for n in "${NODES[@]}"; do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$PREFIX-$n")" = healthy ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "$n not healthy: $(docker inspect -f '{{json .State.Health}}' "$PREFIX-$n")"
        sleep 1
    done
    echo "image-test: $n healthy: $(docker inspect -f '{{(index .State.Health.Log 0).Output}}' "$PREFIX-$n" | tr -d '\n')"
done

for n in b a seeder; do
    t0=$(date +%s%N)
    docker stop -t "$GRACE" "$PREFIX-$n" >/dev/null
    took_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    code=$(docker inspect -f '{{.State.ExitCode}}' "$PREFIX-$n")
    echo "image-test: docker stop $n: exit code $code after ${took_ms} ms (grace ${GRACE} s)"
    [ "$code" = 0 ] || fail "$n exited with $code"
done
docker logs "$PREFIX-a" 2>&1 | grep -q "peers file written" || fail "node a did not write its peers file at shutdown"
echo "image-test: ok"
