#!/usr/bin/env bash
# Measures nested-host start-up: seconds from starting the tool to COMMAND
# starting in L1 (the "running:" line on the console, timestamped on the
# host) and the whole run's wall time, for a trivial command (`true`).
# Usage: tools/nested/measure.sh [RUNS] [warm|cold|both]
#   cold = a fresh, empty KILN_CACHE per run (downloads the L1 kernel again)
# Prints each run, then medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-3} mode=${2:-both}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nested-measure.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

one() {   # prints "to_command total"
  local t0 t1='' line
  t0=$EPOCHREALTIME
  while IFS= read -r line; do
    [[ -z $t1 && $line == *"nested-host: L1: up "*"running:"* ]] && t1=$EPOCHREALTIME
  done < <("$here/../nested-host" -- true 2>"$tmp/err"; echo "rc=$?" >"$tmp/rc")
  wait
  [[ $(<"$tmp/rc") == rc=0 ]] || { cat "$tmp/err" >&2; echo "run failed" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc) $(echo "$EPOCHREALTIME - $t0" | bc)"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

series() {   # label
  local i r
  : >"$tmp/$1"
  for ((i = 1; i <= runs; i++)); do
    if [[ $1 == cold ]]; then
      rm -rf "$tmp/cache"; mkdir "$tmp/cache"
      r=$(KILN_CACHE=$tmp/cache one)
    else
      r=$(one)
    fi
    echo "$1 run $i: to-command ${r% *}s total ${r#* }s"
    echo "$r" >>"$tmp/$1"
  done
  printf '%s median: to-command %.2fs total %.2fs (load %s)\n' "$1" \
    "$(cut -d' ' -f1 "$tmp/$1" | median)" "$(cut -d' ' -f2 "$tmp/$1" | median)" \
    "$(cut -d' ' -f1 /proc/loadavg)"
}

[[ $mode == warm ]] || series cold
if [[ $mode != cold ]]; then
  "$here/../nested-host" -- true >/dev/null 2>&1   # make sure the cache is warm
  series warm
fi
