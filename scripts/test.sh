#!/usr/bin/env bash
# The test command: installs what the build needs, checks formatting and lints, and runs every
# test of the workspace (unit, conformance, property and integration tests that start real
# `weir` processes, the object-store tests against a real S3-compatible server, and the web UI
# in a headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The S3-compatible server (s3s-fs, loopback only) the storage tests start; required, so that
# no S3 test passes by skipping.
WEIR_S3S_FS="$(scripts/install-s3-server.sh)"
export WEIR_S3S_FS
export WEIR_REQUIRE_S3=1
# Headless Chromium, chromedriver and promtool for the web UI and metrics tests; required too.
scripts/install-test-tools.sh
export WEIR_REQUIRE_BROWSER=1
# Each fuzz target (a unit test beside its decoder, see crates/fuzz) runs this long.
export WEIR_FUZZ_SECONDS="${WEIR_FUZZ_SECONDS:-5}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
