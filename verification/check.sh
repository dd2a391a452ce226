#!/usr/bin/env bash
# Model-check the session protocol with SPIN (see docs/verification.md).
#
#   bash verification/check.sh          # the standard checks, about a minute
#   bash verification/check.sh --full   # adds the deep runs, a few minutes more
#
# Exit status: 0 when the correct model has no errors in any check AND every
# deliberately flawed variant yields a counterexample; 1 otherwise; 2 when a
# tool is missing.  A variant that stops failing is as much a regression as
# the real model failing: it would mean the model can no longer see the flaw.
#
# Environment:
#   VERIFY_SRC  directory holding session.pml and session_broken.pml
#               (default: this script's directory)
#   VERIFY_OUT  where the summary and counterexamples go (default: ./out here)
#   VERIFY_ONLY space-separated check names to run (default: all)
#   VERIFY_JOBS checks run at once (default: number of CPUs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${VERIFY_SRC:-$here}"
out="${VERIFY_OUT:-$here/out}"
full=0
case "${1:-}" in
  --full) full=1 ;;
  "") ;;
  *) echo "usage: $0 [--full]" >&2; exit 2 ;;
esac

for tool in spin gcc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check.sh: '$tool' not found (apt-get install spin gcc)" >&2
    exit 2
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$src/session.pml" "$src/session_broken.pml" "$work/"
mkdir -p "$out"
rm -f "$out"/*.trail "$out"/*.replay.txt "$out"/*.log "$out"/summary.*

summary="$out/summary.tsv"
jobs_max="${VERIFY_JOBS:-$(nproc 2>/dev/null || echo 2)}"
names=()

# run NAME MODEL MODE EXPECT DEFINES
#   MODE    safety: assertions + invalid end states (DFS)
#           np:     non-progress cycles under weak fairness (-DNP, -l -f)
#           bfs:    assertions + invalid end states, breadth first, so the
#                   counterexample is a shortest one
#   EXPECT  pass (0 errors, search complete) or fail (at least one error)
# Checks run in the background, at most $jobs_max at a time, each in its own
# directory (spin and pan write fixed file names into the current one).
run() {
  if [[ -n "${VERIFY_ONLY:-}" && " $VERIFY_ONLY " != *" $1 "* ]]; then return; fi
  names+=("$1")
  while (( $(jobs -rp | wc -l) >= jobs_max )); do wait -n || true; done
  check "$@" &
}

check() {
  local name="$1" model="$2" mode="$3" expect="$4" defs="$5"
  local dir="$work/$name" cflags rflags opt=-O2
  local log="$dir/pan.log"
  mkdir -p "$dir"
  cp "$work/session.pml" "$work/session_broken.pml" "$dir/"
  case "$mode" in
    safety) cflags="-DSAFETY -DCOLLAPSE -DMEMLIM=3072"; rflags="-m20000 -w24" ;;
    np)     cflags="-DNP -DCOLLAPSE -DMEMLIM=3072";     rflags="-l -f -m40000 -w24" ;;
    # counterexamples come quickly: compiling fast matters more than running fast
    bfs)    cflags="-DSAFETY -DBFS -DMEMLIM=3072";      rflags="-m20000 -w24"; opt=-O0 ;;
  esac
  # shellcheck disable=SC2086  # defs and flags are word lists on purpose
  (
    cd "$dir" &&
      spin -a $defs "$model" >"$log" 2>&1 &&
      gcc $opt -w $cflags -o pan pan.c >>"$log" 2>&1 &&
      { ./pan -n $rflags >>"$log" 2>&1 || true; }
  ) || echo "check.sh: $name: spin or gcc failed" >>"$log"

  local errors states transitions depth secs verdict
  errors="$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' "$log" | tail -1)"
  states="$(awk '/states, stored/ {print $1; exit}' "$log")"
  transitions="$(awk '/transitions \(=/ {print $1; exit}' "$log")"
  depth="$(sed -n 's/.*depth reached \([0-9][0-9]*\).*/\1/p' "$log" | tail -1)"
  secs="$(awk '/elapsed time/ {print $4; exit}' "$log")"

  verdict=ok
  if [[ -z "$errors" || -z "$states" ]]; then
    verdict="FAILED (no result from pan)"
  elif [[ "$expect" == pass ]]; then
    if (( errors > 0 )); then
      verdict="FAILED ($errors error(s))"
    elif grep -qE 'Search not completed|max search depth too small|MEMLIM|out of memory' "$log"; then
      verdict="FAILED (search incomplete)"
    fi
  elif (( errors == 0 )); then
    verdict="FAILED (no counterexample)"
  fi

  # Keep every counterexample, replayed by spin, next to its trail.
  if [[ -f "$dir/$model.trail" ]]; then
    cp "$dir/$model.trail" "$out/$name.trail"
    # shellcheck disable=SC2086
    (cd "$dir" && spin -t -p -g $defs "$model") >"$out/$name.replay.txt" 2>&1 || true
  fi
  [[ "$verdict" == ok ]] || cp "$log" "$out/$name.log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$model" "$mode" "$defs" "$expect" \
    "${states:-?}" "${transitions:-?}" "${errors:-?}" "${depth:-?}" "${secs:-?}" "$verdict" >"$work/$name.tsv"
}

# The real model.  Six attach versions with one network fault covers six
# migrations (simultaneous and overlapping ones, suspensions of either end,
# pending timeouts); three versions with two faults covers more loss,
# duplication and overtaking per migration.
run safety-v6f1 session.pml safety pass "-DMAXV=6 -DMAXFAULT=1"
run safety-v3f2 session.pml safety pass "-DMAXV=3 -DMAXFAULT=2"
run np-v6f0     session.pml np     pass "-DMAXV=6 -DMAXFAULT=0"
run np-v3f2     session.pml np     pass "-DMAXV=3 -DMAXFAULT=2"
if (( full )); then
  run safety-v6f2 session.pml safety pass "-DMAXV=6 -DMAXFAULT=2"
  run np-v6f1     session.pml np     pass "-DMAXV=6 -DMAXFAULT=1"
fi

# Flawed variants: each must produce a counterexample.  The sequence-number
# one needs no loss, duplication or overtaking at all (and a queue big enough
# never to overflow): two quick migrations are enough.
run broken-sequence session_broken.pml bfs fail "-DMAXV=2 -DMAXFAULT=0 -DCAP=4"
run literal-resume  session.pml        bfs fail "-DLITERAL_RESUME -DMAXV=3 -DMAXFAULT=2"
run late-confirm    session.pml        bfs fail "-DLATE_CONFIRM -DMAXV=3 -DMAXFAULT=2"

wait

if (( ${#names[@]} == 0 )); then
  echo "check.sh: no check matches VERIFY_ONLY='${VERIFY_ONLY:-}'" >&2
  exit 2
fi

printf 'name\tmodel\tcheck\tdefines\texpect\tstates\ttransitions\terrors\tdepth\tseconds\tverdict\n' >"$summary"
for name in "${names[@]}"; do
  if [[ -f "$work/$name.tsv" ]]; then
    cat "$work/$name.tsv" >>"$summary"
  else
    printf '%s\t?\t?\t?\t?\t?\t?\t?\t?\t?\tFAILED (check did not finish)\n' "$name" >>"$summary"
  fi
done

{
  printf '%-16s %-19s %-7s %-6s %12s %12s %6s %6s %8s  %s\n' \
    check model mode expect states transitions errors depth seconds verdict
  tail -n +2 "$summary" | while IFS=$'\t' read -r name model mode defs expect states trans errors depth secs verdict; do
    printf '%-16s %-19s %-7s %-6s %12s %12s %6s %6s %8s  %s\n' \
      "$name" "$model" "$mode" "$expect" "$states" "$trans" "$errors" "$depth" "$secs" "$verdict"
  done
} | tee "$out/summary.txt"

if cut -f11 "$summary" | grep -q '^FAILED'; then
  echo "check.sh: FAILED (logs in $out)" >&2
  exit 1
fi
echo "check.sh: all checks as expected (counterexamples in $out)"
