#!/usr/bin/env bash
# Checks that vendor/parity-db is the published parity-db crate plus the patches of
# vendor/parity-db/patches/, applied in order; prints the difference and fails otherwise.
# `--regen NAME` instead writes the difference between upstream + the patches before NAME and
# the vendored tree to patches/NAME (to record a change made in the vendored tree).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.5.7
SHA256=7697e37afbb7410115e32f2da9a96e908a601d103c7c769540ad08bb8406aa0c
VENDOR=vendor/parity-db
CARGO=${CARGO:-cargo}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
# What the vendored tree leaves out of the published crate, and what it adds.
EXCLUDE=(.cargo-ok .cargo_vcs_info.json .editorconfig .github .gitignore Cargo.toml.orig
  PATCHES.md patches target)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

crate_file() {
  compgen -G "$CARGO_HOME/registry/cache/*/parity-db-$VERSION.crate" | head -n 1 || true
}
crate=$(crate_file)
if [[ -z "$crate" ]]; then
  # Let cargo download the published crate into its cache, outside this workspace's patch.
  mkdir -p "$work/fetch/src"
  printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nparity-db = "=%s"\n' \
    "$VERSION" >"$work/fetch/Cargo.toml"
  echo 'fn main() {}' >"$work/fetch/src/main.rs"
  "$CARGO" fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
  crate=$(crate_file)
fi
[[ -n "$crate" ]] || { echo "parity-db $VERSION not found in $CARGO_HOME" >&2; exit 1; }
echo "$SHA256  $crate" | sha256sum --check --quiet

tar -xzf "$crate" -C "$work"
tree="$work/parity-db-$VERSION"
excludes=()
for e in "${EXCLUDE[@]}"; do excludes+=(--exclude="$e"); done

regen=${2:-}
[[ "${1:-}" == "--regen" && -n "$regen" ]] || regen=""
for p in "$VENDOR"/patches/*.patch; do
  [[ -e "$p" ]] || continue
  [[ "$(basename "$p")" == "$regen" ]] && break
  patch --quiet --no-backup-if-mismatch -d "$tree" -p1 <"$p"
done

if [[ -n "$regen" ]]; then
  mkdir -p "$work/a" "$work/b"
  cp -r "$tree/." "$work/a/"
  cp -r "$VENDOR/." "$work/b/"
  (cd "$work" && diff -ruN "${excludes[@]}" a b | sed -E 's/^((---|\+\+\+) [^\t]*)\t.*/\1/' \
    | grep -v '^diff -ruN') >"$VENDOR/patches/$regen" || true
  echo "wrote $VENDOR/patches/$regen"
  exit 0
fi

if ! diff -ru "${excludes[@]}" "$tree" "$VENDOR"; then
  echo "vendor/parity-db differs from parity-db $VERSION + patches/ (above)" >&2
  exit 1
fi
echo "vendor/parity-db is parity-db $VERSION + $(ls "$VENDOR"/patches/*.patch | wc -l) patches"
