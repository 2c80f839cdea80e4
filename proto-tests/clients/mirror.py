"""Records for the mirror tests (proto-tests/mirror.rs), written and read
directly on a cluster.

  produce --bootstrap B --topic T --count N --start S [--partition P]
          N keyed records with headers, values "v<S+i>", from four producers
          with batching on, one per codec (none, gzip, lz4, zstd), each
          taking every fourth record; all to partition P if given, else by
          key. Prints {"delivered": n, "failed": n}.
  dump    --bootstrap B --topic T
          Every record of every partition from offset 0, in log order:
          {"partitions": {"0": [[key, value, headers, timestamp], ...], ...}}
"""
import argparse
import json
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def produce(a):
    codecs = ["none", "gzip", "lz4", "zstd"]
    producers = [Producer({
        "bootstrap.servers": a.bootstrap,
        "client.id": f"mirror-{codec}",
        "compression.type": codec,
        "linger.ms": 20,
        "batch.num.messages": 500,
        "acks": "all",
    }) for codec in codecs]
    delivered, failed = 0, 0

    def on_delivery(err, _msg):
        nonlocal delivered, failed
        if err is None:
            delivered += 1
        else:
            failed += 1

    for i in range(a.count):
        n = a.start + i
        p = producers[i % len(producers)]
        while True:
            try:
                extra = {} if a.partition is None else {"partition": a.partition}
                p.produce(a.topic, key=f"k{n % 97}".encode(), value=f"v{n}".encode(),
                          headers=[("n", str(n).encode()), ("codec", codecs[i % 4].encode())],
                          timestamp=1_700_000_000_000 + n, on_delivery=on_delivery, **extra)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    for p in producers:
        p.flush(60)
    print(json.dumps({"delivered": delivered, "failed": failed}), flush=True)


def dump(a):
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": "mirror-dump-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 10,
        "client.id": "mirror-dump",
    })
    md = c.list_topics(a.topic, timeout=10).topics[a.topic]
    c.assign([TopicPartition(a.topic, p, 0) for p in md.partitions])
    out = {str(p): [] for p in md.partitions}
    # Until every partition reports its end: tansu's sqlite engine takes
    # seconds to answer a partition's first fetch.
    remaining = set(md.partitions)
    deadline = time.time() + 120
    while remaining:
        if time.time() > deadline:
            raise SystemExit(f"dump: partitions {sorted(remaining)} never reached their end")
        for m in c.consume(1000, 0.2):
            if m.error() is None:
                headers = [[k, v.decode()] for k, v in (m.headers() or [])]
                out[str(m.partition())].append(
                    [m.key().decode(), m.value().decode(), headers, m.timestamp()[1]])
            elif m.error().code() == KafkaError._PARTITION_EOF:
                remaining.discard(m.partition())
            else:
                raise SystemExit(f"consume error {m.error()}")
    c.close()
    print(json.dumps({"partitions": out}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["produce", "dump"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--partition", type=int, default=None)
    a = ap.parse_args()
    {"produce": produce, "dump": dump}[a.command](a)


if __name__ == "__main__":
    main()
