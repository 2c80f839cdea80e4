# Shared by benches/mirror.sh and benches/cutover.sh (sourced, not run):
# deps, a release build, a work dir cleaned up on exit, free loopback ports,
# tansu brokers with memory storage. Expects ROOT and NAME to be set; sets
# KLINK, WORK, PIDS.

say() { echo "[$NAME $(date +%H:%M:%S)] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

"$ROOT/scripts/deps.sh" >/dev/null
# shellcheck disable=SC1091
source "${KLINK_CACHE:-$HOME/.cache/klink}/env.sh"
say "building klink --release"
cargo build --release --locked --bin klink >&2
KLINK="${CARGO_TARGET_DIR:-$ROOT/target}/release/klink"
[ -x "$KLINK" ] || die "no klink binary at $KLINK"

WORK="$(mktemp -d "/tmp/klink-$NAME.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else say "kept $WORK"; fi
}
trap cleanup EXIT

free_port() { "$KLINK_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for i in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listening on 127.0.0.1:$1"
}
start_tansu() { # start_tansu <port> <name>
    "$KLINK_TANSU" broker --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$1" --advertised-listener-url "tcp://127.0.0.1:$1" \
        --cluster-id "$2" >"$WORK/$2.log" 2>&1 &
    PIDS+=($!)
    wait_port "$1"
}
