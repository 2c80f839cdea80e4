"""Full-speed producers for the flip test (proto-tests/flips.rs).

  ledger --bootstrap B --topic T --other O --seconds S --max N
         Runs four confluent-kafka producers through klink at once, at full
         speed with the client's defaults (5 requests in flight, linger,
         batching), until S seconds or N records each:
           idem    idempotent, acks=all, topic T
           plain   non-idempotent, acks=all, topic T
           acks0   acks=0, topic T
           split   idempotent, acks=all, alternating T and O (O's writes are
                   routed to the other cluster, so its requests are split)
         Values are "<producer>:<n>", keys spread over the partitions.
         Prints one JSON line: per producer, every acknowledged record as
         [topic, partition, n], the errors, and whether one was fatal.
  dump   --bootstrap B --topic T
         Reads every partition of T from offset 0 until idle, directly from
         a cluster; prints {"records": [[partition, offset, value], ...]}.
"""
import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def log(*a):
    print(time.strftime("%H:%M:%S"), "flips.py:", *a, file=sys.stderr, flush=True)


class Ledger:
    def __init__(self, name, bootstrap, topics, conf):
        self.name, self.topics = name, topics
        self.acked, self.errors, self.fatal, self.sent = [], [], False, 0
        base = {
            "bootstrap.servers": bootstrap,
            "client.id": f"flips-{name}",
            "message.timeout.ms": 60000,
            "error_cb": self.on_error,
        }
        base.update(conf)
        self.producer = Producer(base)

    def on_error(self, err):
        if err.fatal():
            self.fatal = True
        self.note(f"error_cb: {err}")

    def note(self, text):
        if len(self.errors) < 20:
            self.errors.append(text)

    def on_delivery(self, err, msg):
        if err is not None:
            if err.fatal():
                self.fatal = True
            self.note(f"delivery: {err}")
            return
        n = int(msg.value().decode().split(":")[1])
        self.acked.append([msg.topic(), msg.partition(), n])

    def produce_one(self):
        topic = self.topics[self.sent % len(self.topics)]
        value = f"{self.name}:{self.sent}".encode()
        try:
            self.producer.produce(topic, key=f"k{self.sent}".encode(), value=value,
                                  on_delivery=self.on_delivery)
        except BufferError:
            self.producer.poll(0.01)
            return
        self.sent += 1

    def report(self):
        return {"sent": self.sent, "acked": self.acked, "errors": self.errors, "fatal": self.fatal}


def ledger(a):
    ledgers = [
        Ledger("idem", a.bootstrap, [a.topic], {"enable.idempotence": True, "acks": "all"}),
        Ledger("plain", a.bootstrap, [a.topic], {"enable.idempotence": False, "acks": "all"}),
        Ledger("acks0", a.bootstrap, [a.topic], {"enable.idempotence": False, "acks": "0"}),
        Ledger("split", a.bootstrap, [a.topic, a.other], {"enable.idempotence": True, "acks": "all"}),
    ]
    print("STARTED", flush=True)
    deadline = time.time() + a.seconds
    while time.time() < deadline and any(l.sent < a.max for l in ledgers):
        for l in ledgers:
            if l.sent < a.max:
                for _ in range(50):
                    l.produce_one()
            l.producer.poll(0)
    produced_for = time.time() - (deadline - a.seconds)
    for l in ledgers:
        left = l.producer.flush(60)
        if left:
            l.note(f"{left} records not flushed")
        log(l.name, "sent", l.sent, "in", round(produced_for, 1), "s, acked", len(l.acked),
            "errors", len(l.errors))
    print(json.dumps({l.name: l.report() for l in ledgers}), flush=True)


def dump(a):
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": "flips-dump-unused",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "client.id": "flips-dump",
    })
    md = c.list_topics(a.topic, timeout=10).topics.get(a.topic)
    if md is None or md.error is not None:
        print(json.dumps({"records": [], "error": str(md.error if md else "missing")}), flush=True)
        return
    c.assign([TopicPartition(a.topic, p, 0) for p in md.partitions])
    records, idle_since = [], time.time()
    while time.time() - idle_since < 1.5:
        msgs = c.consume(1000, 0.2)
        for m in msgs:
            if m.error() is None:
                records.append([m.partition(), m.offset(), m.value().decode()])
            elif m.error().code() != KafkaError._PARTITION_EOF:
                log("consume error", m.error())
        if msgs:
            idle_since = time.time()
    c.close()
    print(json.dumps({"records": records}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["ledger", "dump"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--other", default="")
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--max", type=int, default=100000)
    a = ap.parse_args()
    {"ledger": ledger, "dump": dump}[a.command](a)


if __name__ == "__main__":
    main()
