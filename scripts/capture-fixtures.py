"""Captures real Kafka frames for klink's micro benchmarks.

Starts a tansu broker (from the cache scripts/deps.sh fills), puts a
recording TCP relay in front of it, runs confluent-kafka (librdkafka) through
the relay (create topics, produce, consume, list metadata), and writes the
largest frame of each API and version seen, both directions, to
fixtures/frames/<api>-v<version>-request.bin / -response.bin (each file is
one whole frame, length prefix included).

    $KLINK_PYTHON scripts/capture-fixtures.py

Everything binds 127.0.0.1; everything started here is stopped on exit.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "frames")
NAMES = {0: "produce", 1: "fetch", 2: "list-offsets", 3: "metadata", 8: "offset-commit", 9: "offset-fetch",
         10: "find-coordinator", 11: "join-group", 14: "sync-group", 18: "api-versions", 19: "create-topics"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_frame(sock):
    try:
        return read_frame_or_fail(sock)
    except OSError:
        return None


def read_frame_or_fail(sock):
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (length,) = struct.unpack(">i", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            return None
        body += chunk
    return head + body


def save(name, frame):
    # The largest frame of each kind: the Metadata answer that lists every
    # topic, a Produce request that carries full batches.
    # Frames over 1 MiB would only bloat the repository.
    path = os.path.join(OUT, name)
    if len(frame) > 1 << 20:
        return
    if not os.path.exists(path) or os.path.getsize(path) < len(frame):
        with open(path, "wb") as f:
            f.write(frame)


def relay(client, upstream_port):
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    pending = []  # (api, version) of requests awaiting a response, in order
    lock = threading.Lock()

    def responses():
        while True:
            frame = read_frame(upstream)
            if frame is None:
                client.close()
                return
            with lock:
                api, version = pending.pop(0) if pending else (None, None)
            if api in NAMES:
                save(f"{NAMES[api]}-v{version}-response.bin", frame)
            try:
                client.sendall(frame)
            except OSError:
                return

    threading.Thread(target=responses, daemon=True).start()
    while True:
        frame = read_frame(client)
        if frame is None:
            upstream.close()
            return
        api, version = struct.unpack(">hh", frame[4:8])
        if api in NAMES:
            save(f"{NAMES[api]}-v{version}-request.bin", frame)
        with lock:
            pending.append((api, version))
        try:
            upstream.sendall(frame)
        except OSError:
            return


def main():
    os.makedirs(OUT, exist_ok=True)
    tansu = os.environ.get("KLINK_TANSU", os.path.expanduser("~/.cache/klink/tansu-0.6.0-dynostore-libsql/bin/tansu"))
    broker_port, relay_port = free_port(), free_port()
    workdir = tempfile.mkdtemp()
    # The broker advertises the relay, so every client connection is recorded.
    broker = subprocess.Popen([tansu, "broker", "--storage-engine", "memory://tansu/",
                               "--listener-url", f"tcp://127.0.0.1:{broker_port}",
                               "--advertised-listener-url", f"tcp://127.0.0.1:{relay_port}",
                               "--cluster-id", "fixtures"], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", broker_port)).close()
                break
            except OSError:
                time.sleep(0.1)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", relay_port))
        listener.listen(64)

        def accept():
            while True:
                client, _ = listener.accept()
                threading.Thread(target=relay, args=(client, broker_port), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        bootstrap = f"127.0.0.1:{relay_port}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [NewTopic(f"bench-{i}", 6, 1) for i in range(3)]
        for _, f in admin.create_topics(topics).items():
            f.result(15)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                      "enable.idempotence": True})
        for i in range(3000):
            p.produce(f"bench-{i % 3}", key=f"k{i}".encode(), value=(b"x" * 1000))
        p.flush(30)
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "fetch.wait.max.ms": 10,
                      "auto.offset.reset": "earliest"})
        c.subscribe(["bench-0", "bench-1", "bench-2"])
        got, deadline = 0, time.time() + 20
        while got < 3000 and time.time() < deadline:
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    got += 1
        c.commit(asynchronous=False)
        c.close()
        print(f"captured {len(os.listdir(OUT))} frames into {OUT} (consumed {got})")
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    sys.exit(main())
