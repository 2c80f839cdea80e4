#!/usr/bin/env bash
# klink's job on local defaults: start a local Kafka-compatible broker (tansu),
# put klink in front of it, create a topic, produce and consume through klink,
# and show that every broker address a client learns is a klink address.
# Everything binds 127.0.0.1; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/deps.sh >/dev/null
# shellcheck disable=SC1091
source "${KLINK_CACHE:-$HOME/.cache/klink}/env.sh"
echo "== building klink"
cargo build --release --locked --quiet
KLINK="$PWD/target/release/klink"

free_port() { "$KLINK_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

broker_port="$(free_port)"
klink_port="$(free_port)"
virtual_start=$(( 20000 + RANDOM % 10000 ))

echo "== starting tansu broker on 127.0.0.1:$broker_port"
"$KLINK_TANSU" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$broker_port" \
    --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
    --cluster-id demo >"$work/tansu.log" 2>&1 &
pids+=($!)

cat >"$work/klink.toml" <<TOML
[proxy]
listen = "127.0.0.1:$klink_port"
advertised_host = "127.0.0.1"
broker_ports_start = $virtual_start
state_dir = "$work/state"
control_socket = "$work/state/control.sock"

[clusters.source]
bootstrap = "127.0.0.1:$broker_port"
TOML
echo "== starting klink on 127.0.0.1:$klink_port (config $work/klink.toml)"
RUST_LOG=info "$KLINK" proxy --config "$work/klink.toml" >"$work/klink.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "klink ready" "$work/klink.log" && break; sleep 0.1; done
grep -q "klink ready" "$work/klink.log" || { cat "$work/klink.log"; exit 1; }

echo "== creating topic 'orders' (3 partitions) through klink"
"$KLINK_PYTHON" - "$klink_port" <<'PY'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}"})
for topic, future in admin.create_topics([NewTopic("orders", 3, 1)]).items():
    future.result(15)
PY

echo "== what a client sees: kcat -L through klink (upstream broker is on port $broker_port)"
"$KLINK_KCAT" -b "127.0.0.1:$klink_port" -L

echo "== producing 1000 keyed records through klink"
seq 0 999 | awk '{print "order-" $1 ":amount=" ($1 * 7 % 100)}' |
    "$KLINK_KCAT" -b "127.0.0.1:$klink_port" -P -t orders -K: -X linger.ms=0 -X batch.num.messages=1

echo "== consuming them back through klink"
count="$("$KLINK_KCAT" -b "127.0.0.1:$klink_port" -C -t orders -o beginning -e -q \
    -X fetch.wait.max.ms=10 -f '%k\n' | sort -u | wc -l)"
echo "consumed $count distinct records of 1000"

if "$KLINK_KCAT" -b "127.0.0.1:$klink_port" -L | grep -q ":$broker_port"; then
    echo "FAIL: an upstream address reached the client"; exit 1
fi
[ "$count" = 1000 ] || { echo "FAIL: expected 1000 records"; exit 1; }
echo "== done: every record went through klink, and the client only ever saw klink addresses"
