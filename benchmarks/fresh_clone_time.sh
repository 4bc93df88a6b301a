#!/usr/bin/env bash
# `make TARGET` (default: test) timed from a fresh clone of each commit, one after the other, and the ratio.
#   benchmarks/fresh_clone_time.sh 08868d6 HEAD          # as the note on issue 19 measured it
#   benchmarks/fresh_clone_time.sh 08868d6 HEAD demo
# Each clone gets its own .venv, so the install is timed too. Run it on an otherwise idle machine.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_COMMIT NEW_COMMIT [make target]" >&2; exit 2; }
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
target=${3:-test}
work=$(mktemp -d)
chmod 755 "$work"  # older commits test file modes as the user nobody, who must reach the clone
trap 'rm -rf "$work"' EXIT
declare -A seconds
for rev in "$1" "$2"; do
  dir="$work/$(git -C "$repo" rev-parse --short "$rev")"
  git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$rev"
  start=$(date +%s.%N)
  (cd "$dir" && make "$target" > "$dir.log" 2>&1) || { echo "make $target failed at $rev; last lines:" >&2; tail -5 "$dir.log" >&2; exit 1; }
  seconds[$rev]=$(python3 -c "print($(date +%s.%N) - $start)")
  printf '%-12s make %s: %6.1f s  (%s)\n' "$rev" "$target" "${seconds[$rev]}" "$(grep -E 'passed|wrote' "$dir.log" | tail -1)"
done
printf 'ratio %s / %s: %.2f\n' "$2" "$1" "$(python3 -c "print(${seconds[$2]} / ${seconds[$1]})")"
