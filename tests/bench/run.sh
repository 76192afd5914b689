#!/usr/bin/env bash
# Benchmarks and size report for issue figures (not a test: nothing here asserts timing).
#   - stripped static size of the x86_64 musl release binary
#   - a 200 MB download from loopback nginx: agent (hash included) vs curl, agent peak RSS
#   - installFeature round-trip latency over 100 calls (median, p99)
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/setup.sh all >/dev/null
export NNC_CACHE=${NNC_CACHE:-$HOME/.cache/nnc-agent}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$NNC_CACHE/target}
rustup target list --installed | grep -q x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
dpkg -s musl-tools >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
cargo build --release --quiet --target x86_64-unknown-linux-musl
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/nnc-agent"
echo "binary: $bin"
echo "size (stripped, static x86_64 musl): $(stat -c %s "$bin") bytes"
file "$bin" 2>/dev/null || true
"$NNC_CACHE/venv/bin/python" tests/bench/install_bench.py "$bin"
