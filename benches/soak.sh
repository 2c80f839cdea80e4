#!/usr/bin/env bash
# A soak: steady mixed load through klink for a long time, sampling what
# grows when a proxy leaks (memory, file descriptors) and what degrades
# (latency), every 10 s:
#
#   benches/soak.sh                   # 30 minutes, plus the build
#   DURATION=120 benches/soak.sh      # a quick look
#
# One tansu broker (memory storage) and `klink proxy` in front of it with
# its admin listener. The load, all through klink, for DURATION seconds:
#   - `klink perf producer`, acks=all, RATE records/s of RECORD_SIZE bytes
#     on a 3-partition topic;
#   - `klink perf consumer` in a group, reading that topic as it grows;
#   - a new connection every second (`kcat -L`: ApiVersions and Metadata,
#     then close), as short-lived admin tools and health checks make.
# Each sample line gives klink's RSS (/proc/PID/status), its open file
# descriptors (/proc/PID/fd), its client connections, and the p99 of the
# time klink took to answer Produce and Fetch in that interval (from the
# klink_request_duration_seconds histogram on /metrics; Fetch includes the
# consumer's long-poll wait), and the broker's own p99 over every request
# klink sent it (klink_upstream_request_duration_seconds, which is per
# cluster, not per API): where the broker's grows with klink's, the broker
# slowed down. p99s are bucket bounds (0.5 ms .. 30 s).
# The end prints each figure's first and last third (medians) and their
# ratio: flat is 1.0; then 20 s of the same produce straight to the broker
# and through klink, to tell which of them slowed down. Run it on an
# otherwise idle machine: other work on the same cores shows up as latency.
#
# Not part of scripts/test.sh. Knobs: DURATION (1800), INTERVAL (10),
# RATE (500), RECORD_SIZE (512), KLINK_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-1800}"
INTERVAL="${INTERVAL:-10}"
RATE="${RATE:-500}"
RECORD_SIZE="${RECORD_SIZE:-512}"

NAME=soak
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

BROKER_PORT="$(free_port)"
start_tansu "$BROKER_PORT" soak-source
LISTEN_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
PORTS_START="$(free_port)"
cat >"$WORK/klink.toml" <<EOF
[proxy]
listen = "127.0.0.1:$LISTEN_PORT"
advertised_host = "127.0.0.1"
broker_ports_start = $PORTS_START
state_dir = "$WORK/state"
control_socket = "$WORK/state/control.sock"
admin_listen = "127.0.0.1:$ADMIN_PORT"

[clusters.source]
bootstrap = "127.0.0.1:$BROKER_PORT"
EOF
RUST_LOG=warn "$KLINK" proxy --config "$WORK/klink.toml" >"$WORK/klink.log" 2>&1 &
KLINK_PID=$!
PIDS+=("$KLINK_PID")
wait_port "$LISTEN_PORT"
wait_port "$ADMIN_PORT"
BOOTSTRAP="127.0.0.1:$LISTEN_PORT"
"$KLINK_PYTHON" "$ROOT/proto-tests/clients/routing.py" create --bootstrap "$BOOTSTRAP" \
    --topic soak --partitions 3 >/dev/null

RECORDS=$((DURATION * RATE))
say "$DURATION s at $RATE records/s of $RECORD_SIZE B through klink (pid $KLINK_PID), a sample every $INTERVAL s"
"$KLINK" perf producer --topic soak --num-records "$RECORDS" --record-size "$RECORD_SIZE" \
    --throughput "$RATE" --producer-props "bootstrap.servers=$BOOTSTRAP" acks=all linger.ms=5 \
    >"$WORK/producer.log" 2>&1 &
PRODUCER=$!
PIDS+=("$PRODUCER")
"$KLINK" perf consumer --topic soak --messages "$RECORDS" --bootstrap-server "$BOOTSTRAP" \
    --group soak-consumer --timeout $(((DURATION + 60) * 1000)) \
    >"$WORK/consumer.log" 2>&1 &
CONSUMER=$!
PIDS+=("$CONSUMER")
(
    end=$((SECONDS + DURATION))
    while [ "$SECONDS" -lt "$end" ]; do
        "$KLINK_KCAT" -b "$BOOTSTRAP" -L -m 5 >/dev/null 2>&1 || true
        sleep 1
    done
) &
PIDS+=($!)

"$KLINK_PYTHON" - "$KLINK_PID" "$ADMIN_PORT" "$DURATION" "$INTERVAL" <<'EOF'
import os, statistics, sys, time, urllib.request
from prometheus_client.parser import text_string_to_metric_families

pid, admin, duration, interval = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])

def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    buckets, connections = {}, 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "klink_request_duration_seconds_bucket" and s.labels["api"] in ("Produce", "Fetch"):
                buckets.setdefault(s.labels["api"], []).append((float(s.labels["le"]), s.value))
            elif s.name == "klink_upstream_request_duration_seconds_bucket" and s.labels.get("cluster") == "source":
                buckets.setdefault("upstream", []).append((float(s.labels["le"]), s.value))
            elif s.name == "klink_client_connections":
                connections = s.value
    return {api: sorted(b) for api, b in buckets.items()}, connections

def p99_ms(now, before):
    """The 99th percentile of the interval: the smallest bucket bound that
    holds 99% of the requests counted since the last sample."""
    if not now:
        return float("nan")
    was = dict(before or [])
    deltas = [(le, count - was.get(le, 0)) for le, count in now]
    total = deltas[-1][1]
    if total <= 0:
        return float("nan")
    for le, count in deltas:
        if count >= 0.99 * total:
            return le * 1000
    return float("inf")

def proc():
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))

KEYS = ["Produce", "Fetch", "upstream"]
rows, last = [], scrape()[0]
began = time.time()
print(f"{'t (s)':>6} {'RSS MiB':>8} {'fds':>5} {'conns':>6} {'Produce p99 ms':>15}"
      f" {'Fetch p99 ms':>13} {'broker p99 ms':>14}", flush=True)
while time.time() - began < duration:
    time.sleep(interval)
    buckets, connections = scrape()
    rss, fds = proc()
    p99s = [p99_ms(buckets.get(k), last.get(k)) for k in KEYS]
    last = buckets
    rows.append((rss, fds, connections, *p99s))
    print(f"{time.time() - began:6.0f} {rss:8.1f} {fds:5d} {connections:6.0f} {p99s[0]:15.1f}"
          f" {p99s[1]:13.1f} {p99s[2]:14.1f}", flush=True)

third = max(1, len(rows) // 3)
print("\ntrend (median of the first third -> median of the last third, ratio):")
names = ["RSS MiB", "fds", "client connections", "Produce p99 ms", "Fetch p99 ms",
         "broker p99 ms (all APIs)"]
for i, name in enumerate(names):
    first = statistics.median(r[i] for r in rows[:third])
    final = statistics.median(r[i] for r in rows[-third:])
    ratio = final / first if first else float("nan")
    print(f"  {name:24} {first:10.1f} -> {final:10.1f}   {ratio:5.2f}x")
EOF
wait "$PRODUCER" || die "the producer failed: $(tail -3 "$WORK/producer.log")"
say "producer: $(tail -1 "$WORK/producer.log")"
kill -0 "$KLINK_PID" || die "klink exited"

# Who slowed down, if anything did: the same short produce, at the same
# rate, straight to the broker and through klink, now that the broker holds
# the whole run's records.
for via in "straight to the broker" "through klink"; do
    if [ "$via" = "through klink" ]; then servers="$BOOTSTRAP"; else servers="127.0.0.1:$BROKER_PORT"; fi
    line="$("$KLINK" perf producer --topic soak --num-records $((RATE * 20)) --record-size "$RECORD_SIZE" \
        --throughput "$RATE" --producer-props "bootstrap.servers=$servers" acks=all linger.ms=5 2>&1 | tail -1)"
    say "after the soak, 20 s of produce $via: $line"
done
