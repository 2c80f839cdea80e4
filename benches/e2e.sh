#!/usr/bin/env bash
# Side-by-side end-to-end benchmark, all on loopback, one command:
#
#   benches/e2e.sh                 # about 1-2 minutes on 2 cores, plus the build
#   ROUNDS=5 RECORDS=300000 benches/e2e.sh
#
# Builds klink --release, then for each round starts fresh brokers and
# proxies and runs the same load generator (`klink perf`, 1 KiB records,
# acks=all) against three configurations, in a rotating order:
#
#   direct  the client talks to the broker itself
#   klink   the client talks only to `klink proxy`
#   relay   the client talks only to haproxy in TCP mode (the L4 floor a
#           Kafka-aware proxy can hope for)
#
# Per configuration it prints the median over rounds of: produce and consume
# throughput, the proxy process's CPU seconds per GiB moved (utime+stime from
# /proc/PID/stat around each run, over the record bytes moved), and p50/p99
# produce latency at a fixed rate (unthrottled runs queue in the producer's
# buffer, so their latency says nothing about the proxy). Then the ratios
# klink/direct and klink/relay, and klink's RSS with 10,000 idle client
# connections open.
#
# Why two brokers: tansu advertises exactly one address, and a client goes
# wherever Metadata points it. For the relay, a second tansu listens on its
# own port but advertises the haproxy address, so every connection after the
# bootstrap also goes through haproxy. The direct and klink cases share the
# first broker (klink rewrites its address itself). Both brokers are the same
# binary with the same settings and memory storage, restarted every round so
# that neither carries more data than the other.
#
# Not part of scripts/test.sh. Knobs (environment): ROUNDS (3), RECORDS
# (200000 per throughput run), LATENCY_RECORDS (10000), LATENCY_RATE (5000
# records/s), IDLE_CONNS (10000), KLINK_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-3}"
RECORDS="${RECORDS:-200000}"
RECORD_SIZE=1024
LATENCY_RECORDS="${LATENCY_RECORDS:-10000}"
LATENCY_RATE="${LATENCY_RATE:-5000}"
IDLE_CONNS="${IDLE_CONNS:-10000}"
# Hard bound for the whole script; every single run has its own timeout too.
MAX_SECONDS=540

say() { echo "[e2e $(date +%H:%M:%S)] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

scripts/deps.sh >/dev/null
# shellcheck disable=SC1091
source "${KLINK_CACHE:-$HOME/.cache/klink}/env.sh"
TANSU="$KLINK_TANSU"
HAPROXY="${KLINK_HAPROXY:-/usr/sbin/haproxy}"
[ -x "$TANSU" ] || die "tansu not found at $TANSU (scripts/deps.sh installs it)"
[ -x "$HAPROXY" ] || die "haproxy not found at $HAPROXY (scripts/deps.sh installs it)"

say "building klink --release"
cargo build --release --locked --bin klink >&2
KLINK="$ROOT/target/release/klink"
[ -n "${CARGO_TARGET_DIR:-}" ] && KLINK="$CARGO_TARGET_DIR/release/klink"
[ -x "$KLINK" ] || die "no klink binary at $KLINK"

# File descriptors for the idle-connection test: the limit is inherited by
# klink, started below, and by the program that opens the connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 1000)) ]; then
    IDLE_CONNS=$(($(ulimit -n) - 1000))
    say "ulimit -n is $(ulimit -n): opening only $IDLE_CONNS idle connections"
fi

WORK="$(mktemp -d /tmp/klink-e2e.XXXXXX)"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PIDS=()

stop_pid() { # stop_pid <pid>: SIGTERM, then SIGKILL after 5 s
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
    if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else say "kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT
# The watchdog holds none of our output open (a pipe reading this script
# would wait for it), and takes its sleep down with it when stopped.
(
    sleep "$MAX_SECONDS" &
    nap=$!
    trap 'kill "$nap"; exit 0' TERM
    wait "$nap"
    kill -USR1 $$
) >/dev/null 2>&1 </dev/null &
WATCHDOG=$!
trap 'say "over ${MAX_SECONDS}s: stopping"; exit 124' USR1

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Start of `n` consecutive free ports below the ephemeral range.
free_port_range() {
    python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 30000 - n)
    try:
        socks = []
        for p in range(base, base + n):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); sys.exit(0)
    except OSError:
        pass
    finally:
        for s in socks: s.close()
sys.exit("no free port range")
EOF
}

wait_port() { # wait_port <port> <what>
    local i
    for i in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$2 is not listening on 127.0.0.1:$1"
}

cpu_ticks() { # utime + stime of a process, in clock ticks
    # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
CLK_TCK="$(getconf CLK_TCK)"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_tansu() { # start_tansu <listen port> <advertised port> <name>; sets PID
    "$TANSU" broker --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$2" \
        --cluster-id "$3" >"$WORK/$3.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_port "$1" "tansu $3"
}

start_klink() { # start_klink <upstream port> <round>; sets PID, KLINK_PORT
    local dir="$WORK/klink-$2"
    mkdir -p "$dir"
    KLINK_PORT="$(free_port)"
    cat >"$dir/klink.toml" <<EOF
[proxy]
listen = "127.0.0.1:$KLINK_PORT"
advertised_host = "127.0.0.1"
broker_ports_start = $(free_port_range 8)
state_dir = "$dir/state"

[clusters.source]
bootstrap = "127.0.0.1:$1"
EOF
    (cd "$dir" && RUST_LOG=warn,klink=info exec "$KLINK" proxy --config klink.toml >"$dir/klink.log" 2>&1) &
    PID=$!
    PIDS+=("$PID")
    local i
    for i in $(seq 300); do
        grep -q "klink ready" "$dir/klink.log" && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$dir/klink.log" >&2
    die "klink did not start"
}

start_haproxy() { # start_haproxy <listen port> <backend port> <round>; sets PID
    local cfg="$WORK/haproxy-$3.cfg"
    cat >"$cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend kafka
    bind 127.0.0.1:$1
    default_backend broker
backend broker
    server tansu 127.0.0.1:$2
EOF
    "$HAPROXY" -db -f "$cfg" >"$WORK/haproxy-$3.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_port "$1" haproxy
}

create_topic() { # create_topic <broker port> <name>
    timeout 30 "$TANSU" topic create --broker "tcp://127.0.0.1:$1" --partitions 3 "$2" >/dev/null 2>&1 \
        || die "cannot create topic $2 on 127.0.0.1:$1"
}

# Runs a perf command, its stdout into $WORK/perf.out, and the CPU ticks
# <proxy pid> used meanwhile (0 for "-") into CPU_TICKS. Runs in this shell
# (never inside $(...)), so that CPU_TICKS and a failure reach the caller.
measured() { # measured <proxy pid|-> <klink perf args...>
    local pid="$1" before=0 after=0
    shift
    if [ "$pid" != - ]; then before="$(cpu_ticks "$pid")"; fi
    if ! RUST_LOG=warn timeout 180 "$KLINK" perf "$@" >"$WORK/perf.out" 2>"$WORK/perf.err"; then
        cat "$WORK/perf.out" "$WORK/perf.err" >&2
        die "klink perf $* failed"
    fi
    if [ "$pid" != - ]; then after="$(cpu_ticks "$pid")"; fi
    CPU_TICKS=$((after - before))
}

bench_config() { # bench_config <config> <round> <bootstrap port> <admin port> <proxy pid|->
    local cfg="$1" round="$2" port="$3" admin="$4" pid="$5" line
    local topic="e2e-$cfg-$round" lat_topic="e2e-lat-$cfg-$round"
    local bytes=$((RECORDS * RECORD_SIZE))
    create_topic "$admin" "$topic"
    create_topic "$admin" "$lat_topic"

    say "round $round: $cfg: produce $RECORDS x $RECORD_SIZE B"
    measured "$pid" producer --topic "$topic" --num-records "$RECORDS" \
        --record-size "$RECORD_SIZE" --throughput -1 \
        --producer-props "bootstrap.servers=127.0.0.1:$port" acks=all linger.ms=5
    line="$(grep ' records sent, ' "$WORK/perf.out" | tail -1)"
    say "  $line"
    echo "$line" | awk -v c="$cfg" -v r="$round" -v t="$CPU_TICKS" -v b="$bytes" -v hz="$CLK_TCK" \
        '{gsub(/[(,]/, ""); printf "%s\t%s\tproduce\t%s\t%s\t%.6f\t%s\n", c, r, $4, $6, t / hz, b}' >>"$RESULTS"

    say "round $round: $cfg: consume $RECORDS"
    measured "$pid" consumer --topic "$topic" --messages "$RECORDS" \
        --bootstrap-server "127.0.0.1:$port" --timeout 10000
    line="$(tail -1 "$WORK/perf.out")"
    say "  $line"
    echo "$line" | awk -F', ' -v c="$cfg" -v r="$round" -v t="$CPU_TICKS" -v b="$bytes" -v n="$RECORDS" -v hz="$CLK_TCK" \
        '{ if ($5 != n) { print "consumed " $5 " of " n > "/dev/stderr"; exit 1 }
           printf "%s\t%s\tconsume\t%s\t%s\t%.6f\t%s\n", c, r, $6, $4, t / hz, b }' >>"$RESULTS" \
        || die "$cfg consumer did not count every record"

    say "round $round: $cfg: latency at $LATENCY_RATE records/s"
    measured "$pid" producer --topic "$lat_topic" --num-records "$LATENCY_RECORDS" \
        --record-size "$RECORD_SIZE" --throughput "$LATENCY_RATE" --print-metrics \
        --producer-props "bootstrap.servers=127.0.0.1:$port" acks=all linger.ms=0
    awk -v c="$cfg" -v r="$round" '
        /record-latency-p50-ms/ { p50 = $NF }
        /record-latency-p99-ms/ { p99 = $NF }
        END { printf "%s\t%s\tlatency\t%s\t%s\t0\t0\n", c, r, p50, p99 }' "$WORK/perf.out" >>"$RESULTS"
    say "  $(tail -1 "$RESULTS" | awk -F'\t' '{print "p50 " $4 " ms, p99 " $5 " ms"}')"
}

CONFIGS=(direct klink relay)
for round in $(seq "$ROUNDS"); do
    PIDS_BEFORE=("${PIDS[@]}")
    BROKER_PORT="$(free_port)"
    RELAY_BROKER_PORT="$(free_port)"
    RELAY_PORT="$(free_port)"
    start_tansu "$BROKER_PORT" "$BROKER_PORT" "direct-$round"
    start_tansu "$RELAY_BROKER_PORT" "$RELAY_PORT" "relayed-$round"
    start_klink "$BROKER_PORT" "$round"
    KLINK_PID="$PID"
    start_haproxy "$RELAY_PORT" "$RELAY_BROKER_PORT" "$round"
    HAPROXY_PID="$PID"
    # Rotate the order so no configuration always runs first or last.
    for i in 0 1 2; do
        cfg="${CONFIGS[$(((i + round - 1) % 3))]}"
        case "$cfg" in
            direct) bench_config direct "$round" "$BROKER_PORT" "$BROKER_PORT" - ;;
            klink) bench_config klink "$round" "$KLINK_PORT" "$BROKER_PORT" "$KLINK_PID" ;;
            relay) bench_config relay "$round" "$RELAY_PORT" "$RELAY_BROKER_PORT" "$HAPROXY_PID" ;;
        esac
    done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=("${PIDS_BEFORE[@]}")
done

# ------------------------------------------------------------ idle connections
say "idle connections: $IDLE_CONNS to klink's bootstrap port"
BROKER_PORT="$(free_port)"
start_tansu "$BROKER_PORT" "$BROKER_PORT" idle
start_klink "$BROKER_PORT" idle
KLINK_PID="$PID"
create_topic "$BROKER_PORT" e2e-idle
RSS_BEFORE="$(rss_kib "$KLINK_PID")"
IDLE_OUT="$WORK/idle.out"
timeout 120 python3 - "$KLINK_PORT" "$IDLE_CONNS" "$KLINK_PID" "$IDLE_OUT" "$KLINK" <<'EOF' >&2
import errno, select, socket, subprocess, sys, time
port, n, pid, out, klink = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
# Connect without waiting for each handshake: a burst may overflow klink's
# listen backlog, and a dropped SYN costs its sender a 1 s retransmit.
t0 = time.time()
socks, pending = {}, select.poll()
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
        sys.exit("connect failed at once")
    socks[s.fileno()] = s
    pending.register(s, select.POLLOUT)
left, failed = set(socks), 0
while left and time.time() - t0 < 60:
    for fd, _ in pending.poll(1000):
        pending.unregister(fd)
        left.discard(fd)
        failed += socks[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
opened = time.time() - t0
print(f"[e2e] {n - len(left) - failed} idle connections open after {opened:.2f} s", file=sys.stderr)
time.sleep(2)
# A connection klink closed would be readable (EOF) now.
readable = select.poll()
for s in socks.values():
    readable.register(s, select.POLLIN)
closed = len(readable.poll(0)) + len(left) + failed
held = rss()
# klink still serves real clients with all of them open.
ok = subprocess.run([klink, "perf", "producer", "--topic", "e2e-idle", "--num-records", "1000",
                     "--record-size", "100", "--throughput", "-1", "--producer-props",
                     f"bootstrap.servers=127.0.0.1:{port}"], capture_output=True, timeout=60).returncode == 0
for s in socks.values():
    s.close()
time.sleep(2)
with open(out, "w") as f:
    f.write(f"{n}\t{opened:.2f}\t{closed}\t{held}\t{rss()}\t{ok}\n")
EOF
IFS=$'\t' read -r IDLE_N IDLE_SECS IDLE_CLOSED IDLE_RSS IDLE_RSS_AFTER IDLE_OK <"$IDLE_OUT"

# ------------------------------------------------------------------- report
python3 - "$RESULTS" "$RSS_BEFORE" "$IDLE_N" "$IDLE_SECS" "$IDLE_CLOSED" "$IDLE_RSS" "$IDLE_RSS_AFTER" "$IDLE_OK" "$ROUNDS" "$RECORDS" <<'EOF'
import statistics, sys
(path, rss_before, idle_n, idle_secs, idle_closed, idle_rss, idle_rss_after, idle_ok,
 rounds, records) = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
def med(cfg, phase, col):
    vals = [float(r[col]) for r in rows if r[0] == cfg and r[2] == phase]
    return statistics.median(vals) if vals else float("nan")
def cpu_per_gib(cfg, phase):
    vals = [float(r[5]) / (float(r[6]) / 2**30) for r in rows if r[0] == cfg and r[2] == phase]
    return statistics.median(vals) if vals else float("nan")
cfgs = ["direct", "klink", "relay"]
print()
print(f"klink e2e: {rounds} rounds, {records} records of 1 KiB per run, acks=all, one tansu 0.6 broker, loopback, medians")
print()
print(f"{'config':8} {'produce rec/s':>14} {'MB/s':>8} {'consume rec/s':>14} {'MB/s':>8} "
      f"{'proxy CPU s/GiB prod/cons':>26} {'p50 ms':>8} {'p99 ms':>8}")
for c in cfgs:
    cpu = "-" if c == "direct" else f"{cpu_per_gib(c, 'produce'):.2f}/{cpu_per_gib(c, 'consume'):.2f}"
    print(f"{c:8} {med(c,'produce',3):14.0f} {med(c,'produce',4):8.2f} {med(c,'consume',3):14.0f} "
          f"{med(c,'consume',4):8.2f} {cpu:>26} {med(c,'latency',3):8.3f} {med(c,'latency',4):8.3f}")
print()
def ratio(a, b, phase):
    return med(a, phase, 3) / med(b, phase, 3)
for other in ["direct", "relay"]:
    print(f"klink/{other}: produce throughput {ratio('klink', other, 'produce'):.3f}, "
          f"consume throughput {ratio('klink', other, 'consume'):.3f}, "
          f"p50 latency {med('klink','latency',3) - med(other,'latency',3):+.3f} ms, "
          f"p99 latency {med('klink','latency',4) - med(other,'latency',4):+.3f} ms")
for phase in ["produce", "consume"]:
    print(f"proxy CPU per GiB, {phase}: klink/relay {cpu_per_gib('klink', phase) / cpu_per_gib('relay', phase):.2f}")
print()
print(f"idle connections: {idle_n} opened in {idle_secs} s, {idle_closed} failed or closed by klink; "
      f"klink RSS {int(rss_before)/1024:.1f} MiB before, {int(idle_rss)/1024:.1f} MiB with them open "
      f"({(int(idle_rss)-int(rss_before))/max(int(idle_n),1):.2f} KiB each), "
      f"{int(idle_rss_after)/1024:.1f} MiB after closing; a producer through klink meanwhile: "
      f"{'ok' if idle_ok == 'True' else 'FAILED'}")
print("(MB/s is MiB of record values per second for produce; consume counts record batch bytes as fetched)")
EOF
