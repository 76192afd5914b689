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
