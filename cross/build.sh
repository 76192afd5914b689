#!/usr/bin/env bash
# Builds the static, size-optimised release binary for each router target (default: all five)
# into dist/<target>/nnc-agent and checks each one (static, right machine, byte order, float ABI).
#
# All five go through the same path: nightly -Zbuild-std with std's optimize_for_size and
# panic=immediate-abort, linked by zig cc against zig's musl (cargo-zigbuild). MIPS needs
# +crt-static (its musl targets default to dynamic linking); x86_64 uses relocation-model=static
# (non-PIE: smaller, and the agent gains nothing from a relocatable image). Each binary is also
# packed as dist/<target>/nnc-agent.xz (cross/env.sh's xz_options).
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
bash cross/setup.sh
export PATH="$NNC_CACHE/venv/bin:$PATH"
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=("${NNC_TARGETS[@]}")
jobs=${NNC_CROSS_JOBS:-$(nproc)}

build_one() {
  local t=$1 flags var
  flags="-C link-self-contained=no -Zunstable-options -Cpanic=immediate-abort -C force-unwind-tables=no -A linker-messages"
  # Derived Debug prints the type (or variant) name only, and #[track_caller] locations carry
  # no file names: aarch64 -34 KB. So text a user reads must come from Display, or from the
  # Debug of str, paths, numbers and fieldless enums (those are unchanged).
  flags+=" -Zfmt-debug=shallow -Zlocation-detail=none"
  # For size experiments: NNC_EXTRA_RUSTFLAGS="-Z..." bash cross/build.sh TARGET
  flags+=" ${NNC_EXTRA_RUSTFLAGS:-}"
  case $t in
    mips*) flags+=" -C target-feature=+crt-static" ;;
    x86_64-*) flags+=" -C relocation-model=static" ;;
    # Thumb-2 (every ARMv7-A core runs it, the kernel and libc interwork): ~25% smaller code.
    armv7-*) flags+=" -C target-feature=+thumb-mode" ;;
  esac
  var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUSTFLAGS
  # One target dir per target: fat LTO links on one core, so targets build side by side.
  env "$var=$flags" cargo +nightly zigbuild --quiet --locked --release --target "$t" \
    -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size \
    --target-dir "$NNC_CACHE/target-cross/$t" || return 1
  mkdir -p "$NNC_DIST/$t"
  cp "$NNC_CACHE/target-cross/$t/$t/release/nnc-agent" "$NNC_DIST/$t/nnc-agent"
  python3 cross/check_elf.py "$t" "$NNC_DIST/$t/nnc-agent"
  # The packed binary for installing by hand (`xz -d`); cross/size.sh checks it unpacks to
  # the same bytes.
  xz $(xz_options "$t") -c "$NNC_DIST/$t/nnc-agent" > "$NNC_DIST/$t/nnc-agent.xz"
}

# Cargo does not know the linker's libc changed: binaries linked by another zig are removed,
# so that they are linked again (cargo rebuilds a unit whose output is missing).
zig_version=$(python -m ziglang version)
stamp="$NNC_CACHE/target-cross/zig-version"
if [ "$(cat "$stamp" 2>/dev/null)" != "$zig_version" ]; then
  rm -f "$NNC_CACHE"/target-cross/*/*/release/nnc-agent
  mkdir -p "$NNC_CACHE/target-cross" && echo "$zig_version" > "$stamp"
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  echo "== build $t"
  ( build_one "$t" > "$logs/$t.log" 2>&1; echo $? > "$logs/$t.rc" ) &
done
wait
fail=0
for t in "${targets[@]}"; do
  if [ "$(cat "$logs/$t.rc" 2>/dev/null)" = 0 ]; then
    tail -1 "$logs/$t.log"
  else
    echo "== build $t FAILED:"; cat "$logs/$t.log"; fail=1
  fi
done
exit $fail
