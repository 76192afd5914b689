#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then formatting
# and lints, the five static cross builds with their size budget, unit tests on foreign CPUs
# under qemu-user, and `cargo test`: unit tests and integration tests against real nginx, tor,
# v2ray, sing-box, Python GraphQL clients, QEMU VMs booting Debian's kernels, and the packages;
# then every fuzz target for a short bounded time (NNC_FUZZ_SECS, default 30 s each).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh all
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export NNC_CACHE=${NNC_CACHE:-$HOME/.cache/nnc-agent}
export NNC_PYTHON="$NNC_CACHE/venv/bin/python"
# Build outputs live outside the clone so a fresh clone on the same machine builds incrementally.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$NNC_CACHE/target}

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
step "cross builds (cross/build.sh)"
bash cross/build.sh
step "size budget (cross/size.sh)"
bash cross/size.sh
step "unit tests under qemu-user (cross/test-foreign.sh)"
bash cross/test-foreign.sh
step "cargo test"
cargo test --quiet 2>&1
step "the README's first command, offline (demo/run.sh --check)"
demo_dir=$(mktemp -d /tmp/nnc-demo.XXXXXX)
NNC_DEMO_DIR=$demo_dir NNC_DEMO_PORT=${NNC_DEMO_PORT:-18080} bash demo/run.sh --check
rm -rf "$demo_dir"
step "fuzz targets, ${NNC_FUZZ_SECS:-30} s each (fuzz/run.sh)"
bash fuzz/run.sh "${NNC_FUZZ_SECS:-30}"
step "all tests passed"
