#!/usr/bin/env bash
# The mirror's copy rate against the target's own produce rate, one command:
#
#   benches/mirror.sh                 # about a minute on 2 cores, plus the build
#   ROUNDS=5 RECORDS=400000 benches/mirror.sh
#
# Each round starts two fresh tansu brokers (source and target), fills a
# 3-partition topic on the source with `klink perf producer` (1 KiB records,
# acks=all), then measures, in the same round:
#
#   raw     `klink perf producer` writing the same number of records straight
#           to the target: what the target takes from a batching producer
#   busy    the same raw produce while `klink perf consumer` reads the source
#           topic at full speed, over and over: what the target takes while
#           the source also serves reads on the same cores, as it does
#           during a mirror (the brokers share this machine's 2 cores; in a
#           migration they run on machines of their own)
#   mirror  `klink proxy` with a link on the filled topic: records copied per
#           second from the moment the mirror runs until its lag is 0, read
#           from `klink ctl mirror --json`; and klink's CPU seconds (utime +
#           stime from /proc/PID/stat) per GiB copied
#
# It prints each round and the medians, and the ratios mirror/raw (the goal
# is at least 0.9) and mirror/busy. Not part of scripts/test.sh. Knobs: ROUNDS (3), RECORDS
# (200000), KLINK_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
RECORDS="${RECORDS:-200000}"
RECORD_SIZE=1024

NAME=mirror
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
CLK_TCK="$(getconf CLK_TCK)"

create_topic() { # create_topic <port> <name>
    timeout 30 "$KLINK_TANSU" topic create --broker "tcp://127.0.0.1:$1" --partitions 3 "$2" \
        >/dev/null 2>&1 || die "cannot create $2 on 127.0.0.1:$1"
}

produce() { # produce <port> <topic>: prints records/sec
    RUST_LOG=warn timeout 300 "$KLINK" perf producer --topic "$2" --num-records "$RECORDS" \
        --record-size "$RECORD_SIZE" --throughput -1 \
        --producer-props "bootstrap.servers=127.0.0.1:$1" acks=all linger.ms=5 \
        | grep ' records sent, ' | tail -1 | awk '{gsub(/[(,]/, ""); print $4}'
}

# Sum of mirrored_to over partitions, or nothing while the mirror is not up.
mirrored() { # mirrored <config>
    "$KLINK" ctl --config "$1" mirror bench --json 2>/dev/null | "$KLINK_PYTHON" -c '
import json, sys
m = json.load(sys.stdin).get("mirror") or []
print(sum(p["mirrored_to"] for p in m), sum(p["lag"] for p in m), len(m))' 2>/dev/null || true
}

now() { date +%s.%N; }
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    source_port="$(free_port)"; target_port="$(free_port)"
    start_tansu "$source_port" "source-$round"
    start_tansu "$target_port" "target-$round"
    create_topic "$source_port" bench
    create_topic "$target_port" raw
    create_topic "$target_port" busy
    say "round $round: filling the source with $RECORDS x $RECORD_SIZE B"
    produce "$source_port" bench >/dev/null
    say "round $round: raw produce to the target"
    raw="$(produce "$target_port" raw)"
    say "  raw: $raw records/s"
    say "round $round: raw produce to the target while the source serves reads"
    ( while :; do
        RUST_LOG=warn timeout 120 "$KLINK" perf consumer --topic bench --messages "$RECORDS" \
            --bootstrap-server "127.0.0.1:$source_port" >/dev/null 2>&1 || true
      done ) &
    reader=$!
    busy="$(produce "$target_port" busy)"
    kill "$reader" 2>/dev/null || true
    pkill -f "perf consumer --topic bench .*127.0.0.1:$source_port" 2>/dev/null || true
    wait "$reader" 2>/dev/null || true
    say "  busy: $busy records/s"

    dir="$WORK/klink-$round"; mkdir -p "$dir"
    cat >"$dir/klink.toml" <<EOF
[proxy]
listen = "127.0.0.1:$(free_port)"
advertised_host = "127.0.0.1"
broker_ports_start = $(( 20000 + RANDOM % 9000 ))
state_dir = "$dir/state"
control_socket = "$dir/state/control.sock"
[clusters.source]
bootstrap = "127.0.0.1:$source_port"
[clusters.target]
bootstrap = "127.0.0.1:$target_port"
[[links]]
id = "bench"
source = "source"
target = "target"
topics = ["bench"]
EOF
    RUST_LOG="${MIRROR_LOG:-warn,klink=info}" "$KLINK" proxy --config "$dir/klink.toml" >"$dir/klink.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    # From the first report of the running mirror to lag 0.
    start_copied=""; deadline=$(( $(date +%s) + 300 ))
    while [ -z "$start_copied" ]; do
        read -r copied lag parts <<<"$(mirrored "$dir/klink.toml")" || true
        if [ "${parts:-0}" = 3 ]; then
            start_copied="$copied"; t0="$(now)"; c0="$(cpu_ticks "$pid")"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { cat "$dir/klink.log" >&2; die "mirror did not start"; }
        sleep 0.05
    done
    while :; do
        read -r copied lag parts <<<"$(mirrored "$dir/klink.toml")"
        [ "$lag" = 0 ] && [ "$copied" -ge "$RECORDS" ] && break
        [ "$(date +%s)" -lt "$deadline" ] || { cat "$dir/klink.log" >&2; die "mirror did not catch up"; }
        sleep 0.05
    done
    t1="$(now)"; c1="$(cpu_ticks "$pid")"
    echo "$round $raw $start_copied $copied $t0 $t1 $c0 $c1 $busy" | awk -v hz="$CLK_TCK" -v size="$RECORD_SIZE" '{
        n = $4 - $3; secs = $6 - $5; rate = n / secs
        gib = n * size / 1073741824; cpu = ($8 - $7) / hz
        printf "%s\t%.0f\t%.0f\t%.2f\t%d\t%.0f\n", $1, $2, rate, (gib > 0 ? cpu / gib : 0), n, $9
    }' >>"$RESULTS"
    say "  mirror: $(tail -1 "$RESULTS" | awk '{printf "%s records/s, %s CPU s/GiB (%s records timed)", $3, $4, $5}')"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
done

echo "round  raw rec/s  busy rec/s  mirror rec/s  mirror/raw  mirror/busy  mirror CPU s/GiB"
awk '{printf "%-5s  %9s  %10s  %12s  %10.3f  %11.3f  %16s\n", $1, $2, $6, $3, $3 / $2, $3 / $6, $4}' "$RESULTS"
sort -n -k2 "$RESULTS" | awk '{a[NR]=$2} END {print "median raw:    " a[int((NR+1)/2)]}'
sort -n -k3 "$RESULTS" | awk '{a[NR]=$3} END {print "median mirror: " a[int((NR+1)/2)]}'
awk '{printf "%.6f\n", $3 / $2}' "$RESULTS" | sort -n |
    awk '{a[NR]=$1} END {printf "median mirror/raw: %.3f\n", a[int((NR+1)/2)]}'
awk '{printf "%.6f\n", $3 / $6}' "$RESULTS" | sort -n |
    awk '{a[NR]=$1} END {printf "median mirror/busy: %.3f\n", a[int((NR+1)/2)]}'
sort -n -k4 "$RESULTS" | awk '{a[NR]=$4} END {print "median mirror CPU s/GiB: " a[int((NR+1)/2)]}'
