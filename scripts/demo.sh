#!/usr/bin/env bash
# klink's job on local defaults: two local Kafka-compatible clusters (tansu),
# klink in front of both, a linked topic produced to through klink and
# mirrored to the target by klink; then a whole migration while producers
# and a consumer group keep running through the same address: promote
# (writes held while the mirror drains, the group handed over, routes
# flipped, writes released), roll back (the reverse mirror kept the source
# a full copy), promote again, commit. It prints each flip's fence time and
# the ledger: every acknowledged record on the target exactly once, in
# order, and every broker address a client learned a klink address.
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

source_port="$(free_port)"
target_port="$(free_port)"
klink_port="$(free_port)"
virtual_start=$(( 20000 + RANDOM % 10000 ))

start_tansu() { # name port
    echo "== starting the $1 cluster (tansu) on 127.0.0.1:$2"
    "$KLINK_TANSU" broker --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$2" --advertised-listener-url "tcp://127.0.0.1:$2" \
        --cluster-id "demo-$1" >"$work/tansu-$1.log" 2>&1 &
    pids+=($!)
}
start_tansu source "$source_port"
start_tansu target "$target_port"

cat >"$work/klink.toml" <<TOML
[proxy]
listen = "127.0.0.1:$klink_port"
advertised_host = "127.0.0.1"
broker_ports_start = $virtual_start
state_dir = "$work/state"
control_socket = "$work/state/control.sock"

[clusters.source]
bootstrap = "127.0.0.1:$source_port"
[clusters.target]
bootstrap = "127.0.0.1:$target_port"

[[links]]
id = "orders-move"
source = "source"
target = "target"
topics = ["orders"]
groups = ["billing"]
TOML
echo "== starting klink on 127.0.0.1:$klink_port (config $work/klink.toml)"
RUST_LOG=info "$KLINK" proxy --config "$work/klink.toml" >"$work/klink.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "klink ready" "$work/klink.log" && break; sleep 0.1; done
grep -q "klink ready" "$work/klink.log" || { cat "$work/klink.log"; exit 1; }
ctl() { "$KLINK" ctl --config "$work/klink.toml" "$@"; }
routing() { "$KLINK_PYTHON" scripts/../proto-tests/clients/routing.py "$@"; }
count_on() { routing count --bootstrap "$1" --topic orders | "$KLINK_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["count"])'; }

echo "== creating topic 'orders' (3 partitions) through klink: it lands on the source,"
echo "   and klink creates its mirror topic on the target and starts copying"
routing create --bootstrap "127.0.0.1:$klink_port" --topic orders --partitions 3 >/dev/null

echo "== what a client sees: kcat -L through klink (the clusters are on ports $source_port and $target_port)"
"$KLINK_KCAT" -b "127.0.0.1:$klink_port" -L

echo "== producing 500 records through klink"
seq 0 499 | awk '{print "order-" $1 ":before-flip-" $1}' |
    "$KLINK_KCAT" -b "127.0.0.1:$klink_port" -P -t orders -K: -X linger.ms=0 -X batch.num.messages=1
echo "== waiting for the mirror to copy them (LAG 0)"
for _ in $(seq 300); do
    ctl status --json | "$KLINK_PYTHON" -c 'import json,sys
t=[t for t in json.load(sys.stdin)["topics"] if t["topic"]=="orders"][0]
sys.exit(0 if t["state"]=="mirroring" and t["lag"]==0 else 1)' && break
    sleep 0.2
done
ctl status
ctl mirror orders
ctl offsets orders 0

flips() { "$KLINK_PYTHON" proto-tests/clients/flips.py "$@"; }
fence() { "$KLINK_PYTHON" -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["promotion"]["fence_ms"])'; }

echo "== producers (idempotent, plain, acks=0, split across clusters; 1,000 rec/s each) and a"
echo "   consumer in group billing start through klink and run through the whole migration"
flips consume --bootstrap "127.0.0.1:$klink_port" --topic orders --group billing --seconds 16 \
    >"$work/consumed.json" 2>"$work/consume.log" &
pids+=($!)
consumer=$!
routing create --bootstrap "127.0.0.1:$klink_port" --topic payments --partitions 3 >/dev/null
flips ledger --bootstrap "127.0.0.1:$klink_port" --topic orders --other payments --seconds 10 \
    --pace 1000 --max 1000000 --one-per-batch >"$work/ledger.json" 2>"$work/ledger.log" &
pids+=($!)
producers=$!
sleep 2

echo "== the operator promotes orders (and the link's group billing) to the target"
promoted="$(ctl promote orders --json | fence)"
echo "   writes held for $promoted ms"
ctl status
sleep 2
echo "== ... and rolls it back: the reverse mirror has copied the target's new records to the source"
rolled_back="$(ctl rollback orders --json | fence)"
echo "   writes held for $rolled_back ms"
ctl status
sleep 2
echo "== promotes it again"
again="$(ctl promote orders --json | fence)"
echo "   writes held for $again ms"
wait "$producers"
echo "== the producers are done; the operator commits (the reverse mirror stops)"
ctl commit orders
ctl status
wait "$consumer"
sed -i '/^STARTED$/d' "$work/ledger.json" "$work/consumed.json"
flips dump --bootstrap "127.0.0.1:$target_port" --topic orders >"$work/target.json"

echo "== the ledger (the target read directly)"
"$KLINK_PYTHON" scripts/demo_ledger.py "$work/ledger.json" "$work/consumed.json" "$work/target.json"
echo "fence times: promote $promoted ms, rollback $rolled_back ms, promote $again ms"

if "$KLINK_KCAT" -b "127.0.0.1:$klink_port" -L | grep -qE ":($source_port|$target_port)\b"; then
    echo "FAIL: an upstream address reached the client"; exit 1
fi
echo "== done: a topic migrated, rolled back and migrated again under running clients; every"
echo "   acknowledged record accounted for, and clients only ever saw klink addresses"
