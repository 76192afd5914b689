#!/usr/bin/env bash
# Size report for the binaries cross/build.sh made: stripped bytes, and the gzip / xz bytes a
# package would carry. Fails when a binary is over its budget in cross/size-budget.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
report="$NNC_DIST/size-report.txt"
fail=0
{
  printf '%-34s %10s %10s %10s %10s\n' target stripped gzip-9 xz-9e budget
  for t in "${NNC_TARGETS[@]}"; do
    bin="$NNC_DIST/$t/nnc-agent"
    [ -f "$bin" ] || continue
    size=$(stat -c %s "$bin")
    gz=$(gzip -9n < "$bin" | wc -c)
    xz=$(xz -9e < "$bin" | wc -c)
    budget=$(awk -v t="$t" '$1 == t {print $2}' cross/size-budget)
    verdict=-
    if [ -n "$budget" ]; then
      if [ "$size" -le "$budget" ]; then verdict="$budget ok"; else verdict="$budget OVER"; fail=1; fi
    fi
    printf '%-34s %10d %10d %10d %s\n' "$t" "$size" "$gz" "$xz" "$verdict"
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
