#!/usr/bin/env bash
# Recovery drill on a real local cluster: one `weir jobmanager` and three `weir taskmanager`s
# with two slots each (all on loopback, ports picked by the OS), keyed-agg at p=4 with 500 ms
# checkpoints. Once KILL_AFTER checkpoints completed, TaskManager tm-0 (it always runs subtasks:
# four slots spread over three TaskManagers) is killed with SIGKILL (or SIGNAL=STOP); the job
# must finish on the survivors. Prints the kill time and the recovery record (phase times, moved
# subtasks, bytes read locally vs downloaded).
#
#   scripts/recovery-drill.sh                                   # small state
#   KEYS=1000000 PADDING=1024 RECORDS=3000000 scripts/recovery-drill.sh   # ~1 GiB of RocksDB state
#
# KEEP_UP=1 prints the web UI's address as soon as the JobManager listens, and after the drill
# leaves the cluster up, running one more (unbounded, rate-limited) keyed-agg, until Ctrl-C.
#
# Needs curl. WEIR=path/to/weir picks the binary (default: target/release/weir, else debug).
set -euo pipefail
cd "$(dirname "$0")/.."

weir=${WEIR:-}
if [ -z "$weir" ]; then
  for w in "${CARGO_TARGET_DIR:-target}/release/weir" "${CARGO_TARGET_DIR:-target}/debug/weir"; do
    [ -x "$w" ] && { weir=$w; break; }
  done
fi
[ -x "${weir:-}" ] || { echo "no weir binary: cargo build --release --bin weir" >&2; exit 2; }
keys=${KEYS:-100000}
padding=${PADDING:-0}
records=${RECORDS:-3000000}
rate=${RATE:-300000}
kill_after=${KILL_AFTER:-3}
signal=${SIGNAL:-KILL}

work=$(mktemp -d -t weir-drill-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

"$weir" jobmanager --rpc-bind 127.0.0.1:0 --rest-bind 127.0.0.1:0 \
  -D heartbeat.interval=100ms -D heartbeat.timeout=1s 2> "$work/jm.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "RPC on" "$work/jm.log" && break; sleep 0.1; done
rpc=$(sed -n 's/.*RPC on \([^,]*\),.*/\1/p' "$work/jm.log" | head -1)
rest=$(sed -n 's|.*REST on http://\([^ ]*\).*|\1|p' "$work/jm.log" | head -1)
[ -n "$rpc" ] && [ -n "$rest" ] || { cat "$work/jm.log" >&2; exit 1; }
# Every REST call presents the cluster's token (the JobManager created this user's token file
# if there was none); the header goes through a private file, not a command line.
token_file="${XDG_CONFIG_HOME:-$HOME/.config}/weir/auth-token"
[ -r "$token_file" ] || { echo "no token file at $token_file" >&2; exit 1; }
(umask 077; printf 'Authorization: Bearer %s\n' "$(cat "$token_file")" > "$work/auth")
[ -z "${KEEP_UP:-}" ] || echo "web UI: http://$rest/ (Prometheus: http://$rest/metrics; the UI asks for the token in $token_file)"
for i in 0 1 2; do
  "$weir" taskmanager --jobmanager "http://$rpc" --slots 2 --id "tm-$i" \
    --state-dir "$work/tm-$i" 2> "$work/tm-$i.log" &
  pids+=($!)
done
for _ in $(seq 100); do
  [ "$(curl -s -H @"$work/auth" "http://$rest/overview" | sed -n 's/.*"taskmanagers":\([0-9]*\).*/\1/p')" = 3 ] && break
  sleep 0.1
done

job=$("$weir" run keyed-agg -p 4 --detached --jobmanager "http://$rpc" \
  --param keys="$keys" --param records="$records" --param rate="$rate" --param padding="$padding" \
  -D execution.checkpointing.interval=500ms -D state.checkpoints.dir="file://$work/checkpoints" \
  -D restart-strategy.type=fixed-delay -D restart-strategy.fixed-delay.delay=0ms)
echo "job $job: keys=$keys padding=$padding records=$records rate=$rate"

completed() { curl -s -H @"$work/auth" "http://$rest/jobs/$job/checkpoints" | sed -n 's/.*"completed":\([0-9]*\).*/\1/p'; }
until [ "$(completed)" -ge "$kill_after" ] 2>/dev/null; do sleep 0.1; done
size=$(du -sh "$work/checkpoints" | cut -f1)
killed_ms=$(date +%s%3N)
kill "-$signal" "${pids[1]}"
echo "SIG$signal tm-0 at $killed_ms ms (after $(completed) checkpoints; checkpoint dir $size)"

state() { curl -s -H @"$work/auth" "http://$rest/jobs/$job" | sed -n 's/^{"id":"[0-9a-f]*","name":"[^"]*","state":"\([A-Z]*\)".*/\1/p'; }
until [[ "$(state)" =~ ^(FINISHED|FAILED|CANCELED)$ ]]; do sleep 0.2; done
echo "job $(state)"
curl -s -H @"$work/auth" "http://$rest/jobs/$job/recoveries" | python3 -m json.tool 2>/dev/null \
  || curl -s -H @"$work/auth" "http://$rest/jobs/$job/recoveries"
echo "kill → detect: $(( $(curl -s -H @"$work/auth" "http://$rest/jobs/$job/recoveries" | sed -n 's/.*"detected_ms":\([0-9]*\).*/\1/p' | head -1) - killed_ms )) ms"

if [ -n "${KEEP_UP:-}" ]; then
  "$weir" run keyed-agg -p 2 --detached --jobmanager "http://$rpc" \
    --param keys=10000 --param records=unbounded --param rate=50000 \
    -D execution.checkpointing.interval=1s -D state.checkpoints.dir="file://$work/checkpoints" \
    -D restart-strategy.type=fixed-delay -D restart-strategy.fixed-delay.delay=0ms >/dev/null
  echo "web UI: http://$rest/ shows the drill's job and a running keyed-agg; Ctrl-C stops the cluster"
  trap 'exit 0' INT TERM
  while true; do sleep 1; done
fi
