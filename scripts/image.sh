#!/usr/bin/env bash
# make image: builds the container image IMAGE (default syncnode:dev) from docker/Dockerfile: a
# static syncnode (glibc, +crt-static) built with the cargo profile IMAGE_PROFILE (default release;
# `dev` optimises only the hot crates and builds much sooner) on an empty base. Needs a docker
# daemon; pulls nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
IMAGE=${IMAGE:-syncnode:dev}
PROFILE=${IMAGE_PROFILE:-release}
TARGET=x86_64-unknown-linux-gnu

# --target keeps +crt-static off the build scripts and proc macros, which must stay dynamic.
CARGO_INCREMENTAL=0 RUSTFLAGS="-C target-feature=+crt-static" \
    "$CARGO" build --profile "$PROFILE" --locked --target "$TARGET" -p syncnode
# Cargo names the dev profile's directory `debug`.
bin="target/$TARGET/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/syncnode"
if readelf -l "$bin" | grep -q INTERP; then
    echo "image: $bin is not static (it names a dynamic loader)" >&2
    exit 1
fi

context=$(mktemp -d /tmp/syncnode-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
cp "$bin" "$context/syncnode"
mkdir "$context/data"
cp docker/Dockerfile "$context/Dockerfile"
# The classic builder: it needs no buildx plugin and, FROM scratch, no base image.
DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" "$context" >/dev/null
docker image inspect "$IMAGE" --format "image: $IMAGE {{.Id}} {{.Size}} bytes, user {{.Config.User}}"
