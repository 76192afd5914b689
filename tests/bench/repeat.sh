#!/usr/bin/env bash
# Flake hunt, not a test: runs one integration test binary N times while two busy loops load
# the CPU (as CI's other work would), and reports each failing run with its panic lines.
#   bash tests/bench/repeat.sh supervisor 20 [test-name-filter]
# This is how the clone/setxid hang of the spawner was found (2 hangs in 13 runs, 0 in 25 after
# the fix). The busy loops end with the script.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?test binary, e.g. supervisor}; runs=${2:-10}; filter=${3:-}
busy() { while :; do :; done; }
busy & b1=$!; busy & b2=$!
trap 'kill $b1 $b2 2>/dev/null' EXIT
fails=0
for i in $(seq 1 "$runs"); do
  out=$(cargo test --quiet --test "$bin" -- $filter 2>&1)
  if grep -q "test result: ok" <<<"$out"; then
    echo "run $i: ok"
  else
    fails=$((fails + 1))
    echo "run $i: FAILED"
    grep -A3 "panicked" <<<"$out" | head -20
  fi
done
echo "$fails of $runs runs failed"
