#!/usr/bin/env bash
# Builds the fuzz targets (cargo +nightly fuzz) and runs each for SECONDS (default 30) on a
# copy of its seed corpus in fuzz/corpus/. Prints executions per target; fails on any crash,
# leaving the reproducer in $NNC_CACHE/fuzz-artifacts/TARGET/.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
NNC_CACHE=${NNC_CACHE:-$HOME/.cache/nnc-agent}
secs=${1:-30}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(catalogue checksums signature routeros_reply elf tar_gz zip graphql share_link)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
tdir=$NNC_CACHE/target-fuzz
cargo +nightly fuzz build --target-dir "$tdir" -O >/dev/null 2>&1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%-16s %12s %10s\n' target executions exec/s
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "$NNC_CACHE/fuzz-artifacts/$t"
  cp fuzz/corpus/"$t"/* "$work/$t/"
  log=$work/$t.log
  if ! cargo +nightly fuzz run --target-dir "$tdir" -O "$t" "$work/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536 -timeout=10 \
      -artifact_prefix="$NNC_CACHE/fuzz-artifacts/$t/" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t crashed; reproducer in $NNC_CACHE/fuzz-artifacts/$t/" >&2
    exit 1
  fi
  runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo 0)
  printf '%-16s %12s %10s\n' "$t" "$runs" "$((runs / secs))"
done
