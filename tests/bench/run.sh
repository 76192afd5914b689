#!/usr/bin/env bash
# Benchmarks and size report for issue figures (not a test: nothing here asserts timing).
#   - stripped static size of the x86_64 musl release binary
#   - a 200 MB download from loopback nginx: agent (hash included) vs curl, agent peak RSS
#   - installFeature round-trip latency over 100 calls (median, p99)
#   - device routing: latency and throughput of a routed LAN client vs a direct one
#   - (tests/bench/qps.py A B A B: the `instances` throughput of binaries side by side)
#   - memory, API throughput, event latency, the scaling table and redb growth (api_bench.py,
#     with the examples/loadgen subscriber client and wrk). A binary given as the argument is
#     measured instead, e.g. dist/x86_64-unknown-linux-musl/nnc-agent (cross/build.sh's: what ships).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/setup.sh all >/dev/null
export NNC_CACHE=${NNC_CACHE:-$HOME/.cache/nnc-agent}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$NNC_CACHE/target}
rustup target list --installed | grep -q x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
for p in musl-tools wrk; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
cargo build --release --quiet --target x86_64-unknown-linux-musl
cargo build --release --quiet --example loadgen
bin=${1:-$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/nnc-agent}
echo "binary: $bin"
echo "size (stripped, static x86_64 musl): $(stat -c %s "$bin") bytes"
file "$bin" 2>/dev/null || true
"$NNC_CACHE/venv/bin/python" tests/bench/install_bench.py "$bin"
"$NNC_CACHE/venv/bin/python" tests/bench/api_bench.py "$bin" "$CARGO_TARGET_DIR/release/examples/loadgen"
echo "== device routing: routed vs direct (tests/routing.rs bench_routed_vs_direct)"
cargo test --quiet --test routing bench_routed_vs_direct -- --ignored --nocapture
