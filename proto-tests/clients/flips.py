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
         [topic, partition, n, t] (t: when its delivery report came, Unix
         seconds), how many deliveries failed, the distinct errors with
         how often each came, whether one was fatal (error callback,
         delivery report, or raised by produce()/poll()/flush()) and the
         fatal errors' texts, and how many records flush() left undelivered.
         A producer stops at a fatal error; the others go on.
  dump   --bootstrap B --topic T
         Reads every partition of T from offset 0 until idle, directly from
         a cluster; prints {"records": [[partition, offset, value], ...],
         "errors": [...]} (consume errors other than end of partition).
  consume --bootstrap B --topic T --group G --seconds S
         A group member (see consume()); FLIPS_CONSUMER_DEBUG=cgrp,fetch in
         the environment turns on librdkafka's debug log (to stderr).
"""
import argparse
import json
import logging
import os
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition


def log(*a):
    print(time.strftime("%H:%M:%S"), "flips.py:", *a, file=sys.stderr, flush=True)


class Ledger:
    def __init__(self, name, bootstrap, topics, conf):
        self.name, self.topics = name, topics
        self.acked, self.errors, self.fatal, self.sent = [], {}, False, 0
        self.failed, self.unflushed, self.stopped, self.fatal_errors = 0, None, False, []
        base = {
            "bootstrap.servers": bootstrap,
            "client.id": f"flips-{name}",
            "message.timeout.ms": 60000,
            "error_cb": self.on_error,
        }
        self.eos_log = []
        if conf.get("enable.idempotence"):
            # Why an idempotent producer bumped its epoch or drained, if it
            # did: librdkafka's own words, the first few of them.
            base["debug"] = "eos"
            base["logger"] = self.eos_logger()
        base.update(conf)
        if name == "idem" and os.environ.get("FLIPS_IDEM_DEBUG"):
            # Everything librdkafka says, to a file (for a stuck producer).
            base["debug"] = "eos,protocol,broker,topic,msg"
            handler = logging.FileHandler(os.environ["FLIPS_IDEM_DEBUG"])
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            full = logging.getLogger("flips-idem-full")
            full.setLevel(logging.DEBUG)
            full.addHandler(handler)
            base["logger"] = full
        self.producer = Producer(base)

    def eos_logger(self):
        ledger = self

        class Keep(logging.Handler):
            def emit(self, record):
                text = record.getMessage()
                if len(ledger.eos_log) < 30 and any(
                        w in text for w in ("bump", "Bump", "drain", "Drain", "fatal", "Fatal", "sequence")):
                    ledger.eos_log.append(f"{time.strftime('%H:%M:%S')} {text}")

        logger = logging.getLogger(f"flips-{self.name}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(Keep())
        return logger

    def set_fatal(self, text):
        self.fatal = True
        if text not in self.fatal_errors and len(self.fatal_errors) < 5:
            self.fatal_errors.append(text)

    def on_error(self, err):
        if err.fatal():
            self.set_fatal(f"error_cb: {err}")
        self.note(f"error_cb: {err}")

    def note(self, text):
        # Distinct errors with how often each came.
        if text in self.errors or len(self.errors) < 20:
            self.errors[text] = self.errors.get(text, 0) + 1

    def on_delivery(self, err, msg):
        if err is not None:
            if err.fatal():
                self.set_fatal(f"delivery: {err}")
            self.failed += 1
            self.note(f"delivery: {err}")
            return
        n = int(msg.value().decode().split(":")[1])
        self.acked.append([msg.topic(), msg.partition(), n, round(time.time(), 4)])

    def guarded(self, what, fn, *args, **kwargs):
        """Calls a producer method. confluent-kafka raises a fatal error from
        produce(), poll() and flush(): it stops this producer (every later
        call would fail) and is reported; the other producers go on."""
        try:
            return fn(*args, **kwargs)
        except KafkaException as e:
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            if err is None or err.fatal() or err.code() == KafkaError._FATAL:
                self.set_fatal(f"{what}: {e}")
                self.cause()
            self.note(f"{what}: {e}")
            self.stopped = True
            return None
        except Exception as e:  # noqa: BLE001
            # confluent-kafka 2.16 raises SystemError from flush() after a
            # fatal error; any exception from the client is a failure.
            self.set_fatal(f"{what} raised {type(e).__name__}: {e}")
            self.note(f"{what} raised {type(e).__name__}: {e}")
            self.stopped = True
            return None

    def cause(self):
        """After a fatal error: serve the error callback, which names the
        underlying error (produce() only says "Local: Fatal error")."""
        try:
            self.producer.poll(0.2)
        except Exception as e:  # noqa: BLE001
            self.set_fatal(f"poll: {e}")

    def produce_one(self):
        topic = self.topics[self.sent % len(self.topics)]
        value = f"{self.name}:{self.sent}".encode()
        try:
            self.guarded("produce", self.producer.produce, topic, key=f"k{self.sent}".encode(),
                              value=value, on_delivery=self.on_delivery)
        except BufferError:
            self.poll(0.01)
            return
        if not self.stopped:
            self.sent += 1

    def poll(self, timeout):
        self.guarded("poll", self.producer.poll, timeout)

    def flush(self, timeout):
        left = self.guarded("flush", self.producer.flush, timeout)
        if left is None:  # raised: what is still queued
            left = self.guarded("flush", self.producer.flush, timeout)
        self.unflushed = left if left is not None else len(self.producer)
        if self.unflushed:
            self.note(f"{self.unflushed} records not flushed")

    def report(self):
        return {"sent": self.sent, "acked": self.acked, "failed": self.failed,
                "errors": sorted(([t, n] for t, n in self.errors.items()), key=lambda e: -e[1]),
                "fatal": self.fatal, "fatal_errors": self.fatal_errors, "unflushed": self.unflushed,
                "eos_log": self.eos_log}


def ledger(a):
    # One record per batch: a consumer resuming from a committed offset then
    # always starts at a batch boundary (tansu drops the rest of a batch a
    # fetch starts inside; README quirks).
    one = {"linger.ms": 0, "batch.num.messages": 1} if a.one_per_batch else {}
    ledgers = [
        Ledger("idem", a.bootstrap, [a.topic], {"enable.idempotence": True, "acks": "all", **one}),
        Ledger("plain", a.bootstrap, [a.topic], {"enable.idempotence": False, "acks": "all", **one}),
        Ledger("acks0", a.bootstrap, [a.topic], {"enable.idempotence": False, "acks": "0", **one}),
        Ledger("split", a.bootstrap, [a.topic, a.other], {"enable.idempotence": True, "acks": "all", **one}),
    ]
    print("STARTED", flush=True)
    began = time.time()
    deadline = began + a.seconds
    allowed = lambda: a.max if not a.pace else min(a.max, (time.time() - began) * a.pace)
    going = lambda l: l.sent < allowed() and not l.stopped
    while time.time() < deadline and any(l.sent < a.max and not l.stopped for l in ledgers):
        for l in ledgers:
            for _ in range(50):
                if going(l):
                    l.produce_one()
            if not l.stopped:
                l.poll(0)
        if a.pace:
            time.sleep(0.002)
    produced_for = time.time() - (deadline - a.seconds)
    for l in ledgers:
        l.flush(20)
        log(l.name, "sent", l.sent, "in", round(produced_for, 1), "s, acked", len(l.acked),
            "failed", l.failed, "unflushed", l.unflushed, "fatal", l.fatal_errors or l.fatal)
    print(json.dumps({l.name: l.report() for l in ledgers}), flush=True)


def kp_ledger(a):
    """kafka-python's producer (acks=all, one record per send) through the
    same ledger: values "kp:N"; prints STARTED, then one JSON line."""
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=0,
                      retries=1000, retry_backoff_ms=100, request_timeout_ms=15000,
                      max_in_flight_requests_per_connection=1, client_id="flips-kp")
    acked, errors, failed = [], {}, [0]

    def ok(n):
        return lambda md: acked.append([md.topic, md.partition, n, round(time.time(), 4)])

    def bad(e):
        failed[0] += 1
        errors[str(e)] = errors.get(str(e), 0) + 1

    print("STARTED", flush=True)
    began, sent = time.time(), 0
    while time.time() - began < a.seconds:
        while sent < min(a.max, (time.time() - began) * a.pace):
            p.send(a.topic, key=f"k{sent}".encode(), value=f"kp:{sent}".encode()) \
                .add_callback(ok(sent)).add_errback(bad)
            sent += 1
        time.sleep(0.002)
    p.flush(30)
    p.close(10)
    log("kp sent", sent, "acked", len(acked), "failed", failed[0])
    print(json.dumps({"acked": acked, "failed": failed[0], "unflushed": sent - len(acked) - failed[0],
                      "errors": sorted(errors.items(), key=lambda e: -e[1])[:5]}), flush=True)


def consume(a):
    """A group member reading --topic for --seconds (and on while records
    keep coming), committing after every batch it got; prints every value
    it saw (duplicates included)."""
    errors, commit_errors, values, records = [], [], [], []
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "client.id": "flips-consume",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
        "error_cb": lambda e: errors.append(str(e)),
        **({"debug": os.environ["FLIPS_CONSUMER_DEBUG"]} if os.environ.get("FLIPS_CONSUMER_DEBUG") else {}),
    })
    c.subscribe([a.topic])
    print("STARTED", flush=True)
    # At least --seconds, then until nothing came for 2 s (a loaded
    # machine may leave it behind), 60 s more at most.
    deadline = time.time() + a.seconds
    last_got = time.time()
    while time.time() < deadline or (time.time() - last_got < 2 and time.time() < deadline + 60):
        msgs = c.consume(500, 0.1)
        got = [m for m in msgs if m.error() is None]
        errors.extend(f"{time.strftime('%H:%M:%S')} {m.error()}" for m in msgs
                      if m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF)
        if got:
            last_got = time.time()
        values.extend(m.value().decode() for m in got)
        records.extend([m.partition(), m.offset(), m.value().decode()] for m in got)
        if got:
            try:
                c.commit(asynchronous=False)
            except KafkaException as e:
                commit_errors.append(str(e))
    c.close()
    print(json.dumps({"values": values, "records": records, "commit_errors": commit_errors[-5:],
                      "errors": errors[:5] + errors[-5:]}), flush=True)


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
    records, errors, idle_since = [], [], time.time()
    while time.time() - idle_since < 1.5:
        msgs = c.consume(1000, 0.2)
        for m in msgs:
            if m.error() is None:
                records.append([m.partition(), m.offset(), m.value().decode()])
            elif m.error().code() != KafkaError._PARTITION_EOF:
                log("consume error", m.error())
                if len(errors) < 20:
                    errors.append(str(m.error()))
        if msgs:
            idle_since = time.time()
    c.close()
    print(json.dumps({"records": records, "errors": errors}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["ledger", "kp-ledger", "dump", "consume"])
    ap.add_argument("--group", default="")
    ap.add_argument("--one-per-batch", action="store_true")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--other", default="")
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--max", type=int, default=100000)
    ap.add_argument("--pace", type=float, default=0,
                    help="records per second per producer at most (0: as fast as they go)")
    a = ap.parse_args()
    {"ledger": ledger, "kp-ledger": kp_ledger, "dump": dump, "consume": consume}[a.command](a)


if __name__ == "__main__":
    main()
