#!/usr/bin/env bash
# Size report for the binaries cross/build.sh made: stripped bytes, the gzip / plain xz bytes a
# package would carry, and the packed nnc-agent.xz. Fails when a binary (or, where the budget
# file gives one, its packed .xz) is over its budget in cross/size-budget.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
report="$NNC_DIST/size-report.txt"
fail=0
{
  printf '%-34s %10s %10s %10s %10s %s\n' target stripped gzip-9 xz-9e packed.xz "budget (stripped, packed.xz)"
  for t in "${NNC_TARGETS[@]}"; do
    bin="$NNC_DIST/$t/nnc-agent"
    [ -f "$bin" ] || continue
    size=$(stat -c %s "$bin")
    gz=$(gzip -9n < "$bin" | wc -c)
    xz=$(xz -9e < "$bin" | wc -c)
    # The packed binary (cross/build.sh, xz_options): it must unpack to the same bytes.
    packed=-
    if [ -f "$bin.xz" ]; then
      if xz -dc "$bin.xz" | cmp -s - "$bin"; then packed=$(stat -c %s "$bin.xz"); else packed=CORRUPT; fail=1; fi
    fi
    read -r budget packed_budget < <(awk -v t="$t" '$1 == t {print $2, $3}' cross/size-budget)
    verdict=-
    if [ -n "$budget" ]; then
      if [ "$size" -le "$budget" ]; then verdict="$budget ok"; else verdict="$budget OVER"; fail=1; fi
    fi
    if [ -n "${packed_budget:-}" ]; then
      if [ "$packed" != - ] && [ "$packed" != CORRUPT ] && [ "$packed" -le "$packed_budget" ]; then
        verdict+=", $packed_budget ok"
      else
        verdict+=", $packed_budget OVER"; fail=1
      fi
    fi
    printf '%-34s %10d %10d %10d %10s %s\n' "$t" "$size" "$gz" "$xz" "$packed" "$verdict"
  done
  # The web page the binary carries (web/, gzipped by build.rs the same way): budget 48 KiB.
  page=0
  for f in web/index.html web/app.js web/app.css; do page=$((page + $(gzip -9n < "$f" | wc -c))); done
  printf '%-34s %10s %10d %10s %s\n' "web page (web/*)" - "$page" - "49152 $([ "$page" -le 49152 ] && echo ok || echo OVER)"
  [ "$page" -le 49152 ] || fail=1
} > "$report"
# (Not `{ …; } | tee`: a pipeline runs the block in a subshell, and its `fail=1` was lost, so
# the budget gate never failed.)
cat "$report"
if [ $fail -ne 0 ]; then
  echo "size.sh: a binary is over its budget (cross/size-budget)" >&2
  exit 1
fi
