# Shared settings for the cross scripts (sourced, not run).
export NNC_CACHE=${NNC_CACHE:-$HOME/.cache/nnc-agent}
export NNC_DIST=${NNC_DIST:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/dist}
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# The five router targets, in the order reports list them.
NNC_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf mipsel-unknown-linux-musl mips-unknown-linux-musl)
# Catalogue arch key of a target triple.
arch_key() {
  case $1 in
    x86_64-*) echo x86_64 ;; aarch64-*) echo aarch64 ;; armv7-*) echo armv7 ;;
    mipsel-*) echo mipsel ;; mips-*) echo mips ;; *) return 1 ;;
  esac
}
# xz options for a target's packed binary (dist/<target>/nnc-agent.xz): the branch/call filter
# of its instruction set (ARM64's needs xz-utils 5.4+; xz has none for MIPS), LZMA2's literal
# and position bits set to the instruction width, and an 8 MiB dictionary (it holds the whole
# binary, so a bigger one gains nothing; unpacking needs 9 MiB instead of -9e's 65 MiB).
xz_options() {
  local lzma=preset=9e,dict=8MiB
  case $1 in
    x86_64-*) echo "--x86 --lzma2=$lzma" ;;
    aarch64-*) echo "--arm64 --lzma2=$lzma,lc=2,lp=2,pb=2" ;;
    armv7-*) echo "--armthumb --lzma2=$lzma,lp=1,pb=1" ;;
    mips*) echo "--lzma2=$lzma,lc=2,lp=2,pb=2" ;;
    *) return 1 ;;
  esac
}
