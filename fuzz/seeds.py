"""Writes the fuzz targets' seed inputs (fuzz/seeds/TARGET/) from the
captured frames and batches in fixtures/, in each target's input layout.
Run by scripts/fuzz.sh; idempotent."""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = os.path.join(ROOT, "fixtures", "frames")
BATCHES = os.path.join(ROOT, "fixtures", "batches")
OUT = os.path.join(ROOT, "fuzz", "seeds")

API_KEYS = {
    "produce": 0, "fetch": 1, "list-offsets": 2, "metadata": 3, "offset-commit": 8,
    "offset-fetch": 9, "find-coordinator": 10, "join-group": 11, "sync-group": 14,
    "api-versions": 18, "create-topics": 19,
}
# Request header v2 (flexible) from these versions on, per API.
FLEXIBLE_FROM = {0: 9, 1: 12, 2: 6, 3: 9, 8: 8, 9: 6, 10: 3, 11: 6, 14: 4, 18: 3, 19: 5}


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def uvarint(b, i):
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def main():
    for name in sorted(os.listdir(FRAMES)):
        data = open(os.path.join(FRAMES, name), "rb").read()
        stem, kind = name[:-4].rsplit("-", 1)
        api_name, version = stem.rsplit("-v", 1)
        api, version = API_KEYS[api_name], int(version)
        payload = data[4:]
        put("frames", name, bytes([7]) + data)
        if kind == "request":
            # Skip the header: api, version, correlation id, client id,
            # then tagged fields when flexible.
            (client_len,) = struct.unpack(">h", payload[8:10])
            i = 10 + max(client_len, 0)
            if version >= FLEXIBLE_FROM.get(api, 99):
                _, i = uvarint(payload, i)
            put("requests", name, bytes([api, version, 0, 0]) + payload[i:])
            put("requests", name + ".target", bytes([api, version, 1, 0]) + payload[i:])
        else:
            put("responses", name, bytes([api, version, 0]) + payload[4:])
            put("responses", name + ".target", bytes([api, version, 1]) + payload[4:])
    for name in sorted(os.listdir(BATCHES)):
        put("batches", name, open(os.path.join(BATCHES, name), "rb").read())
    put("texts", "config.toml", open(os.path.join(ROOT, "fuzz", "seed-config.toml"), "rb").read())
    for i, line in enumerate([
        b'{"cmd":"status"}',
        b'{"cmd":"route","topic":"orders","writes":"target"}',
        b'{"cmd":"route-group","group":"billing","to":"source"}',
        b'{"cmd":"mirror","topic":"orders"}',
        b'{"cmd":"offsets","topic":"orders","partition":0}',
        b'{"cmd":"promote","link":"m","groups":["audit"]}',
    ]):
        put("texts", f"control-{i}.json", line)


if __name__ == "__main__":
    sys.exit(main())
