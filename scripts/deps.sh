#!/usr/bin/env bash
# Install everything klink's protocol tests, demo and benchmarks need, into a cache
# directory, only when missing. Idempotent: a second run only checks and prints
# "<item>: cached" lines. Fails (non-zero) if anything cannot be installed.
#
#   KLINK_CACHE   cache dir (default: $HOME/.cache/klink)
#
# Items:
#   tansu 0.6.0   Kafka-compatible broker (memory and sqlite engines), cargo install into
#                 $KLINK_CACHE/tansu-0.6.0-dynostore-libsql
#   kcat          Debian package
#   haproxy       Debian package
#   socat         Debian package (a TLS terminator in front of tansu)
#   chromium      Debian package (headless, for the status page test)
#   venv          $KLINK_CACHE/venv with proto-tests/clients/requirements.txt
#   kafkajs       $KLINK_CACHE/node/node_modules from proto-tests/clients/package.json
#
# At the end writes $KLINK_CACHE/env.sh (source it) exporting KLINK_TANSU,
# KLINK_PYTHON, KLINK_NODE_PATH, KLINK_KCAT, KLINK_HAPROXY, KLINK_SOCAT, KLINK_CHROMIUM, and
# prints those lines.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="$ROOT/proto-tests/clients"
KLINK_CACHE="${KLINK_CACHE:-$HOME/.cache/klink}"
mkdir -p "$KLINK_CACHE"
KLINK_CACHE="$(cd "$KLINK_CACHE" && pwd)"

TANSU_VERSION=0.6.0
# The sqlite engine (libsql) keeps data and SCRAM users across a broker restart;
# the features are part of the directory name so an older build is not taken for it.
TANSU_FEATURES=dynostore,libsql
TANSU_ROOT="$KLINK_CACHE/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}"
TANSU_BIN="$TANSU_ROOT/bin/tansu"

die() { echo "deps.sh: ERROR: $*" >&2; exit 1; }
say() { echo "$*"; }

# sha256 of the given files (content only), used as install stamps.
hash_files() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- Debian packages
apt_install() { # apt_install <package>
    local pkg="$1"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y --no-install-recommends "$pkg" >&2; then
        return 0
    fi
    echo "deps.sh: apt-get install $pkg failed; running apt-get update and retrying" >&2
    apt-get update >&2 || die "apt-get update failed"
    apt-get install -y --no-install-recommends "$pkg" >&2 || die "apt-get install $pkg failed"
}

need_cmd_pkg() { # need_cmd_pkg <command> <debian package>
    local cmd="$1" pkg="$2" path
    if path="$(command -v "$cmd" 2>/dev/null)"; then
        say "$pkg: cached ($path)"
        return 0
    fi
    say "$pkg: installing (apt-get install $pkg)"
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "$pkg missing and not root (no sudo)"
        sudo=(sudo)
    fi
    if [ ${#sudo[@]} -gt 0 ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$pkg" >&2 \
            || { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$pkg" >&2; } \
            || die "apt-get install $pkg failed"
    else
        apt_install "$pkg"
    fi
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    command -v "$cmd" >/dev/null 2>&1 || die "$pkg installed but '$cmd' is not on PATH"
}

# haproxy lives in /usr/sbin, which is not always on a non-root PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

need_cmd_pkg kcat kcat
need_cmd_pkg haproxy haproxy
need_cmd_pkg socat socat
# Renders the admin status page headless in the observability tests.
need_cmd_pkg chromium chromium
KCAT="$(command -v kcat)"
HAPROXY="$(command -v haproxy)"
SOCAT="$(command -v socat)"
CHROMIUM="$(command -v chromium)"

# ---------------------------------------------------------------- Python venv
VENV="$KLINK_CACHE/venv"
VENV_PY="$VENV/bin/python"
REQ="$CLIENTS/requirements.txt"
[ -f "$REQ" ] || die "missing $REQ"
command -v python3 >/dev/null || die "python3 not found (needed for the client venv)"
want="$(hash_files "$REQ")-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
have="$(cat "$VENV/.klink-stamp" 2>/dev/null || true)"
if [ "$want" = "$have" ] && "$VENV_PY" -c 'import confluent_kafka, kafka' 2>/dev/null; then
    say "venv: cached ($VENV)"
else
    say "venv: installing ($VENV, $(grep -E '^[A-Za-z]' "$REQ" | paste -sd' '))"
    if [ ! -x "$VENV_PY" ] || ! "$VENV_PY" -c '' 2>/dev/null || [ "${have#*-}" != "${want#*-}" ]; then
        rm -rf "$VENV"
        python3 -m venv "$VENV" >&2 || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
    fi
    rm -f "$VENV/.klink-stamp"
    "$VENV_PY" -m pip install --disable-pip-version-check --quiet --only-binary=:all: -r "$REQ" >&2 \
        || die "pip install -r $REQ failed"
    "$VENV_PY" -c 'import confluent_kafka, kafka' || die "venv installed but imports fail"
    echo "$want" > "$VENV/.klink-stamp"
fi

# ---------------------------------------------------------------- kafkajs (npm)
NODE_DIR="$KLINK_CACHE/node"
PKG="$CLIENTS/package.json"
[ -f "$PKG" ] || die "missing $PKG"
command -v node >/dev/null || die "node not found (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
want="$(hash_files "$PKG")"
have="$(cat "$NODE_DIR/.klink-stamp" 2>/dev/null || true)"
if [ "$want" = "$have" ] && [ -f "$NODE_DIR/node_modules/kafkajs/package.json" ]; then
    say "kafkajs: cached ($NODE_DIR/node_modules)"
else
    say "kafkajs: installing ($NODE_DIR, $(node -e 'const p=require(process.argv[1]);console.log(Object.entries(p.dependencies).map(([k,v])=>k+"@"+v).join(" "))' "$PKG"))"
    mkdir -p "$NODE_DIR"
    rm -f "$NODE_DIR/.klink-stamp"
    cp "$PKG" "$NODE_DIR/package.json"
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --no-package-lock --loglevel=error >&2) \
        || die "npm install in $NODE_DIR failed"
    [ -f "$NODE_DIR/node_modules/kafkajs/package.json" ] || die "npm install ran but kafkajs is missing"
    echo "$want" > "$NODE_DIR/.klink-stamp"
fi

# ---------------------------------------------------------------- tansu broker
# cargo install takes ~25 min on 2 cores (with the sqlite engine); a lock keeps two concurrent runs from
# building twice, and a build already running into the same root (started by hand,
# without the lock) is waited for rather than duplicated.
tansu_ok() { [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version >/dev/null 2>&1; }
other_tansu_build() { pgrep -f "cargo install tansu .*--root $TANSU_ROOT" 2>/dev/null | grep -vx "$$" || true; }
if tansu_ok; then
    say "tansu $TANSU_VERSION: cached ($TANSU_BIN)"
else
    command -v flock >/dev/null || die "flock not found (Debian: util-linux)"
    mkdir -p "$TANSU_ROOT"
    exec 9>"$KLINK_CACHE/.lock-tansu"
    if ! flock -n 9; then
        say "tansu $TANSU_VERSION: waiting for another deps.sh run holding $KLINK_CACHE/.lock-tansu"
        flock 9
    fi
    pids="$(other_tansu_build)"
    if [ -n "$pids" ] && ! tansu_ok; then
        say "tansu $TANSU_VERSION: waiting for running cargo install (pid $(echo $pids | tr '\n' ' '))"
        while [ -n "$(other_tansu_build)" ]; do sleep 5; done
    fi
    if tansu_ok; then
        say "tansu $TANSU_VERSION: cached ($TANSU_BIN)"
    else
        command -v cargo >/dev/null || die "cargo not found (needed to build tansu)"
        say "tansu $TANSU_VERSION: installing (cargo install tansu --version $TANSU_VERSION --features $TANSU_FEATURES, ~25 min on 2 cores)"
        cargo install tansu --version "$TANSU_VERSION" --features "$TANSU_FEATURES" --locked --root "$TANSU_ROOT" >&2 \
            || die "cargo install tansu $TANSU_VERSION failed"
        tansu_ok || die "cargo install finished but $TANSU_BIN does not run"
    fi
    exec 9>&-
fi

# ---------------------------------------------------------------- env.sh
NODE_MODULES="$NODE_DIR/node_modules"
ENV_SH="$KLINK_CACHE/env.sh"
tmp="$ENV_SH.tmp.$$"
{
    echo "# written by scripts/deps.sh"
    printf 'export KLINK_TANSU=%q\n' "$TANSU_BIN"
    printf 'export KLINK_PYTHON=%q\n' "$VENV_PY"
    printf 'export KLINK_NODE_PATH=%q\n' "$NODE_MODULES"
    printf 'export KLINK_KCAT=%q\n' "$KCAT"
    printf 'export KLINK_HAPROXY=%q\n' "$HAPROXY"
    printf 'export KLINK_SOCAT=%q\n' "$SOCAT"
    printf 'export KLINK_CHROMIUM=%q\n' "$CHROMIUM"
} > "$tmp"
mv "$tmp" "$ENV_SH"
say "env: $ENV_SH"
grep '^export ' "$ENV_SH"
