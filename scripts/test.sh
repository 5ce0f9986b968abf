#!/usr/bin/env bash
# The test command: installs what the build needs, checks formatting and lints, and runs every
# test of the workspace (unit, conformance, property and integration tests that start real
# `weir` processes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
