#!/usr/bin/env bash
# Sets up the machine, then runs the two example jobs on the embedded default (one process,
# RocksDB keyed state) and shows their output.
#
#   scripts/demo.sh              # the demo, then everything stops
#   scripts/demo.sh --keep-up    # then a cluster stays up for the web UI (its URL is printed)
#                                # until Ctrl-C
set -euo pipefail
keep_up=""
case "${1:-}" in
  "") ;;
  --keep-up) keep_up=1 ;;
  *) echo "usage: scripts/demo.sh [--keep-up]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
scripts/setup.sh
weir=target/debug/weir
[ -n "${CARGO_TARGET_DIR:-}" ] && weir="$CARGO_TARGET_DIR/debug/weir"

work=$(mktemp -d -t weir-demo-XXXXXX)
echo "demo: working in $work" >&2
python3 - "$work/input.txt" <<'PY'
import random, sys
random.seed(7)
words = "the quick brown fox jumps over the lazy dog while a weir holds back the river".split()
with open(sys.argv[1], "w") as f:
    for _ in range(50000):
        f.write(" ".join(random.choice(words) for _ in range(random.randint(1, 10))) + "\n")
PY

echo; echo "== weir plan word-count -p 2"
"$weir" plan word-count -p 2 --param input="$work/input.txt"

echo; echo "== weir local word-count -p 2 (RocksDB state under $work/state)"
"$weir" local word-count -p 2 --param input="$work/input.txt" --param output="$work/word-count" \
  --state-dir "$work/state"
echo "final counts (largest count per word, top 5):"
cat "$work"/word-count/part-* | sort -t$'\t' -k2,2nr | awk -F'\t' '!seen[$1]++' | awk 'NR<=5'

echo; echo "== weir local keyed-agg -p 2 (100K keys, 2M records)"
"$weir" local keyed-agg -p 2 --param keys=100000 --param records=2000000 \
  --param output="$work/keyed-agg" --state-dir "$work/state"
echo "first lines of key<TAB>count<TAB>sum:"
cat "$work"/keyed-agg/part-* | awk 'NR<=3'

echo; echo "== recovery drill: the same job with 200 ms checkpoints; subtask 0 of the aggregate"
echo "   fails once after 300K records, the job restarts from the latest checkpoint"
"$weir" local keyed-agg -p 2 --param keys=100000 --param records=2000000 --param rate=1000000 \
  --param output="$work/keyed-agg-drill" --param fail-after=300000 --state-dir "$work/state" \
  -D execution.checkpointing.interval=200ms -D restart-strategy.type=fixed-delay \
  -D restart-strategy.fixed-delay.delay=100ms 2>&1 | grep -v WARN
if diff <(sort "$work"/keyed-agg/part-*) <(sort "$work"/keyed-agg-drill/part-*) >/dev/null; then
  echo "output identical to the failure-free run (exactly once)"
else
  echo "output DIFFERS from the failure-free run" >&2; exit 1
fi
echo; echo "== cluster drill: weir jobmanager + 3 weir taskmanager processes, keyed-agg at p=4;"
echo "   a TaskManager is killed with SIGKILL after 3 checkpoints (scripts/recovery-drill.sh)"
WEIR="$weir" scripts/recovery-drill.sh 2>&1 | grep -E '^(job|SIGKILL|kill)|"(cause|restored_checkpoint|bytes_downloaded|bytes_local|total_ms|deploy_ms)"'
echo; echo "== weir checkpoints (the drill's checkpoint history)"
"$weir" checkpoints --state-dir "$work/state" | awk 'NR<=8'
echo; echo "demo: outputs are in $work" >&2
if [ -n "$keep_up" ]; then
  echo; echo "== a cluster left up for the web UI: the drill again (a TaskManager is killed after"
  echo "   5 checkpoints), then a running keyed-agg; Ctrl-C stops it"
  WEIR="$weir" KEEP_UP=1 KILL_AFTER=5 scripts/recovery-drill.sh
fi
