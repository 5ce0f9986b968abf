#!/usr/bin/env bash
# Installs s3s-fs, a small S3-compatible server (crates.io), for the S3 integration tests, and
# prints the path of its binary on stdout.
#
# - Idempotent: when the pinned version is already installed, prints its path and returns.
# - Installs into ${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}/s3s-fs-<version>/bin/s3s-fs
#   (~1.5 min to build on 2 cores; the build uses a temporary target dir, not the workspace's).
# - Pinned to 0.14.1: newer versions need a newer Rust than the workspace's.
# The tests start it on loopback only (weir-testkit's S3Server):
#   s3s-fs --host 127.0.0.1 --port PORT --access-key K --secret-key S ROOT   (bucket = ROOT/BUCKET)
set -euo pipefail

version=0.14.1
tools="${WEIR_TOOLS_DIR:-$HOME/.cache/weir-tools}"
root="$tools/s3s-fs-$version"
bin="$root/bin/s3s-fs"

if [ ! -x "$bin" ]; then
  mkdir -p "$tools"
  # One installer at a time (parallel test runs share the tools dir).
  exec 9>"$tools/.s3s-fs.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    echo "install-s3-server: building s3s-fs $version into $root (~1.5 min)" >&2
    staging=$(mktemp -d "$tools/.s3s-fs-staging.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    # A build dir of our own: never the workspace's target dir (and its lock).
    env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR cargo install "s3s-fs@$version" \
      --features binary --locked --quiet --root "$staging" --target-dir "$staging/build" >&2
    rm -rf "$root"
    mkdir -p "$root/bin"
    mv "$staging/bin/s3s-fs" "$bin.tmp"
    mv "$bin.tmp" "$bin"
  fi
fi
echo "$bin"
