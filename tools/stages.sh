#!/usr/bin/env bash
# Run make targets in order, time each, stop at the first failure, and print a timing summary.
set -uo pipefail
rows=()
status=0
for stage in "$@"; do
  started=$SECONDS
  echo "=== make $stage"
  if make --no-print-directory "$stage"; then result=ok; else result=FAILED; status=1; fi
  rows+=("$(printf '%-14s %-7s %6d s' "$stage" "$result" $((SECONDS - started)))")
  [ "$status" = 0 ] || break
done
echo "=== stage timings"
printf '%s\n' "${rows[@]}"
exit "$status"
