#!/usr/bin/env bash
# How long a promotion or a rollback holds writes, under a steady producer
# and a consumer, one command:
#
#   benches/cutover.sh                # about a minute on 2 cores, plus the build
#   CYCLES=40 RATE=5000 benches/cutover.sh
#
# Starts two tansu brokers (source, target) and `klink proxy` with one link
# of TOPICS topics (3 partitions each), mirrored. A confluent-kafka producer
# (acks=all, idempotent, linger 5 ms) writes RATE records/s through klink,
# round-robin over the topics, and keeps every record's latency (send to
# delivery report); a consumer (assigned every partition, no group) reads
# them all through klink. After a quiet phase, CYCLES cycles each promote
# one topic and roll it back (`klink ctl promote/rollback --json`), the
# topics taken in turn. It prints:
#
#   fence ms     p50 / p99 / max of every flip's fence (how long new writes
#                to the topic were held), promotions and rollbacks together
#   producer ms  p50 / p99 of the producer's latency before the cycles and
#                while they ran
#
# Not part of scripts/test.sh. Knobs: CYCLES (20), TOPICS (20), RATE (5000),
# KLINK_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOPICS="${TOPICS:-20}"
CYCLES="${CYCLES:-20}"
RATE="${RATE:-5000}"

NAME=cutover
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

source_port="$(free_port)"; target_port="$(free_port)"; klink_port="$(free_port)"
start_tansu "$source_port" source
start_tansu "$target_port" target
topics=()
for i in $(seq 0 $((TOPICS - 1))); do
    topics+=("t$i")
    timeout 30 "$KLINK_TANSU" topic create --broker "tcp://127.0.0.1:$source_port" \
        --partitions 3 "t$i" >/dev/null 2>&1 || die "cannot create t$i"
done
list="$(printf '"%s", ' "${topics[@]}")"
cat >"$WORK/klink.toml" <<EOF
[proxy]
listen = "127.0.0.1:$klink_port"
advertised_host = "127.0.0.1"
broker_ports_start = $(( 20000 + RANDOM % 9000 ))
state_dir = "$WORK/state"
control_socket = "$WORK/state/control.sock"
[clusters.source]
bootstrap = "127.0.0.1:$source_port"
[clusters.target]
bootstrap = "127.0.0.1:$target_port"
[[links]]
id = "bench"
source = "source"
target = "target"
topics = [${list%, }]
EOF
RUST_LOG="${CUTOVER_LOG:-warn}" "$KLINK" proxy --config "$WORK/klink.toml" >"$WORK/klink.log" 2>&1 &
PIDS+=($!)
wait_port "$klink_port"
ctl() { "$KLINK" ctl --config "$WORK/klink.toml" "$@"; }
say "waiting for $TOPICS topics to mirror"
for _ in $(seq 600); do
    ctl status --json | "$KLINK_PYTHON" -c '
import json, sys
t = json.load(sys.stdin)["topics"]
sys.exit(0 if t and all(x["state"] == "mirroring" and x["lag"] == 0 for x in t) else 1)' && break
    sleep 0.1
done

cat >"$WORK/load.py" <<'EOF'
"""Writes RATE records/s round-robin over the topics until the file STOP
exists; prints per-record (send time, latency ms) as JSON at the end."""
import json, os, sys, time
from confluent_kafka import Producer

bootstrap, rate, stop, topics = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
              "linger.ms": 5})
lat, failed = [], 0
def report(err, msg, sent):
    global failed
    if err is None:
        lat.append((sent, (time.time() - sent) * 1000))
    else:
        failed += 1
began, n = time.time(), 0
print("STARTED", flush=True)
while not os.path.exists(stop):
    while n < (time.time() - began) * rate:
        sent = time.time()
        p.produce(topics[n % len(topics)], b"x" * 100,
                  on_delivery=lambda e, m, s=sent: report(e, m, s))
        n += 1
    p.poll(0.001)
p.flush(30)
print(json.dumps({"latencies": lat, "failed": failed}), flush=True)
EOF
"$KLINK_PYTHON" "$WORK/load.py" "127.0.0.1:$klink_port" "$RATE" "$WORK/STOP" "${topics[@]}" \
    >"$WORK/load.out" 2>"$WORK/load.err" &
load=$!
PIDS+=("$load")
cat >"$WORK/read.py" <<'EOF'
"""Reads every partition of the topics from the end until the file STOP
exists; prints how many records it read."""
import os, sys
from confluent_kafka import Consumer, TopicPartition, OFFSET_END

bootstrap, stop, topics = sys.argv[1], sys.argv[2], sys.argv[3:]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
              "fetch.wait.max.ms": 50})
c.assign([TopicPartition(t, p, OFFSET_END) for t in topics for p in range(3)])
n = 0
while not os.path.exists(stop):
    n += sum(1 for m in c.consume(1000, 0.1) if m.error() is None)
print(n, flush=True)
EOF
"$KLINK_PYTHON" "$WORK/read.py" "127.0.0.1:$klink_port" "$WORK/STOP" "${topics[@]}" \
    >"$WORK/read.out" 2>"$WORK/read.err" &
reader=$!
PIDS+=("$reader")
sleep 1
quiet_from="$(date +%s.%N)"
say "quiet phase"
sleep "$(( CYCLES / 2 + 3 ))"
cycles_from="$(date +%s.%N)"
say "$CYCLES promote/rollback cycles"
: >"$WORK/fences"
for i in $(seq 0 $((CYCLES - 1))); do
    t="${topics[$(( i % TOPICS ))]}"
    for flip in promote rollback; do
        ctl "$flip" "$t" --json | "$KLINK_PYTHON" -c '
import json, sys
print(json.load(sys.stdin)["promotion"]["fence_ms"])' >>"$WORK/fences" \
            || die "$flip $t failed: $(tail -5 "$WORK/klink.log")"
    done
done
cycles_to="$(date +%s.%N)"
touch "$WORK/STOP"
wait "$load" || die "the producer failed: $(tail -5 "$WORK/load.err")"
wait "$reader" || die "the consumer failed: $(tail -5 "$WORK/read.err")"

"$KLINK_PYTHON" - "$WORK/fences" "$WORK/load.out" "$quiet_from" "$cycles_from" "$cycles_to" \
    "$(cat "$WORK/read.out")" <<'EOF'
import json, sys
flips = [float(l) for l in open(sys.argv[1]) if l.strip()]
fences = sorted(flips)
promotions, rollbacks = sorted(flips[0::2]), sorted(flips[1::2])
out = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
quiet_from, cycles_from, cycles_to = map(float, sys.argv[3:6])
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
quiet = [l for s, l in out["latencies"] if quiet_from <= s < cycles_from]
cycles = [l for s, l in out["latencies"] if cycles_from <= s < cycles_to]
print(f"flips (promotions and rollbacks): {len(fences)}, producer failed: {out['failed']},"
      f" consumer read {sys.argv[6]} records")
print(f"fence ms:    p50 {pct(fences, .5):.1f}  p99 {pct(fences, .99):.1f}  max {fences[-1]:.1f}"
      f"  (promotions p50 {pct(promotions, .5):.1f}, rollbacks p50 {pct(rollbacks, .5):.1f})")
print(f"producer ms: quiet p50 {pct(quiet, .5):.1f} p99 {pct(quiet, .99):.1f}"
      f" ({len(quiet)} records); during the cycles p50 {pct(cycles, .5):.1f}"
      f" p99 {pct(cycles, .99):.1f} ({len(cycles)} records)")
EOF
