#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then formatting,
# lints, unit tests and integration tests against real nginx, tor, v2ray and sing-box.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh all
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export NNC_CACHE=${NNC_CACHE:-$HOME/.cache/nnc-agent}
export NNC_PYTHON="$NNC_CACHE/venv/bin/python"
# Build outputs live outside the clone so a fresh clone on the same machine builds incrementally.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$NNC_CACHE/target}

step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
step "cargo test"
cargo test --quiet 2>&1
step "all tests passed"
