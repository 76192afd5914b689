#!/usr/bin/env bash
# Builds the static, size-optimised release binary for each router target (default: all five)
# into dist/<target>/nnc-agent and checks each one (static, right machine, byte order, float ABI).
#
# All five go through the same path: nightly -Zbuild-std with std's optimize_for_size and
# panic=immediate-abort, linked by zig cc against zig's musl (cargo-zigbuild). MIPS needs
# +crt-static (its musl targets default to dynamic linking); x86_64 uses relocation-model=static
# (non-PIE: smaller, and the agent gains nothing from a relocatable image).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
bash cross/setup.sh
export PATH="$NNC_CACHE/venv/bin:$PATH"
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=("${NNC_TARGETS[@]}")
for t in "${targets[@]}"; do
  flags="-C link-self-contained=no -Zunstable-options -Cpanic=immediate-abort -A linker-messages"
  case $t in
    mips*) flags+=" -C target-feature=+crt-static" ;;
    x86_64-*) flags+=" -C relocation-model=static" ;;
  esac
  var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUSTFLAGS
  echo "== build $t"
  env "$var=$flags" cargo +nightly zigbuild --quiet --locked --release --target "$t" \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size \
    --target-dir "$NNC_CACHE/target-cross"
  mkdir -p "$NNC_DIST/$t"
  cp "$NNC_CACHE/target-cross/$t/release/nnc-agent" "$NNC_DIST/$t/nnc-agent"
  python3 cross/check_elf.py "$t" "$NNC_DIST/$t/nnc-agent"
done
