#!/bin/sh
# Run every fuzz target for a bounded time (default 60 s each), then report line coverage.
#   fuzz/run.sh [SECONDS]
# Needs atheris (pip install atheris); corpora grow in fuzz/corpus/<target>/, crashes are
# written to fuzz/artifacts/. Exit status is non-zero if any target found a failing input.
set -u
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
PY=${PYTHON:-python3}
mkdir -p artifacts corpus/wire corpus/handshake corpus/attach
status=0
run() {
    name=$1; shift
    echo "=== $name (${SECONDS_EACH} s) ==="
    # -max_len: one full record plus change; -timeout: any single input taking 10 s is a hang.
    "$PY" "$@" -max_total_time="$SECONDS_EACH" -max_len=70000 -timeout=10 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix=artifacts/"$name"- \
        corpus/"$name" > artifacts/"$name".log 2>&1
    grep -E "INITED|DONE|ERROR|Uncaught|Traceback|stat::number_of_executed|stat::peak_rss" \
        artifacts/"$name".log
    grep -q "ERROR" artifacts/"$name".log && status=1
}
run wire fuzz_wire.py
run handshake fuzz_server.py handshake
run attach fuzz_server.py attach
echo "=== line coverage of the corpora (plain Python replay) ==="
for t in wire handshake attach; do
    echo "--- $t"
    "$PY" replay.py --coverage "$t" corpus/"$t" | grep -E "inputs|wire.py|endpoint.py|session.py|handshake.py"
done
exit $status
