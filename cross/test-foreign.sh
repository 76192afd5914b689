#!/usr/bin/env bash
# Runs the agent's unit tests on foreign CPUs under qemu-user (no binfmt_misc here: the runner
# is named explicitly): aarch64 with rustup's musl std and rust-lld (the cargo runner in
# .cargo/config.toml), armv7 and mipsel built with nightly -Zbuild-std and zig.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
bash cross/setup.sh
export PATH="$NNC_CACHE/venv/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$NNC_CACHE/target}

echo "== unit tests on aarch64 (qemu-aarch64-static)"
cargo test --quiet --locked --target aarch64-unknown-linux-musl --lib

for t in armv7-unknown-linux-musleabihf mipsel-unknown-linux-musl; do
  case $t in armv7-*) qemu=qemu-arm-static ;; mipsel-*) qemu=qemu-mipsel-static ;; esac
  flags="-C link-self-contained=no -A linker-messages"
  [[ $t == mips* ]] && flags+=" -C target-feature=+crt-static"
  var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")
  echo "== unit tests on $t ($qemu)"
  env "${var}_RUSTFLAGS=$flags" "${var}_RUNNER=$qemu" RUSTUP_TOOLCHAIN=nightly \
    cargo-zigbuild test --quiet --locked --target "$t" -Zbuild-std --lib \
    --target-dir "$NNC_CACHE/target-foreign"
done
