#!/usr/bin/env python3
"""Kafka client scenario for klink's protocol tests (confluent-kafka or kafka-python).

    $KLINK_PYTHON scenario.py --lib confluent|kafka-python --bootstrap 127.0.0.1:PORT \
        --topic T --group G --records 10000 --partitions 3 [--timeout-s 120]

Scenario (see README.md in this directory):
  1. create topic T (N partitions, replication 1), wait until metadata shows N partitions
  2. produce R keyed records key=k<i>, value=<i> with the default partitioner, flush,
     keep (partition, offset) from each delivery report
  3. consumer run 1 in group G (earliest, no auto-commit): consume >= 40% of R, commit
     last consumed offset + 1 per partition synchronously, close
  4. consumer run 2: new consumer in G, consume until all values were seen over both
     runs (or every partition is caught up to its end offset), commit, close
  5. print ONE JSON line of facts on stdout (logs go to stderr)

Exit status: 0 when the scenario ran to completion (the JSON's facts may still show
problems; the harness judges them); 1 on an exception, 2 on the overall timeout. In
those cases a JSON line with "error" set is still printed when possible.
"""
import argparse
import concurrent.futures
import json
import logging
import math
import os
import signal
import sys
import time
import traceback

log = logging.getLogger("scenario")

RUN1_FRACTION = 0.4
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 1000
FETCH_WAIT_MS = 10
CAUGHT_UP_GRACE_S = 1.0


def bootstrap_ms(sc):
    """kafka-python's bootstrap timeout, bounded by what is left of --timeout-s."""
    return int(max(1.0, min(30.0, sc.deadline.left())) * 1000)


class ScenarioTimeout(Exception):
    pass


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def check(self, what):
        if self.left() <= 0:
            raise ScenarioTimeout("timeout while " + what)


def parse_record(key, value):
    """Return the int value of a scenario record, or None when key/value are malformed."""
    try:
        k = key.decode() if isinstance(key, bytes) else key
        v = int(value.decode() if isinstance(value, bytes) else value)
    except Exception:
        return None
    return v if k == "k%d" % v else None


class Run:
    """What one consumer instance saw."""

    def __init__(self, name):
        self.name = name
        self.consumed = 0
        self.first_offsets = {}
        self.last_offsets = {}
        self.order_violations = 0
        self.order_violation_samples = []  # [partition, previous offset, offset]
        self.committed = {}
        self.commit_errors = []
        self.committed_readback = None
        self.client_id = None

    def to_json(self):
        d = {
            "client_id": self.client_id,
            "consumed": self.consumed,
            "first_offsets": {str(p): o for p, o in sorted(self.first_offsets.items())},
            "last_offsets": {str(p): o for p, o in sorted(self.last_offsets.items())},
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
            "commit_errors": self.commit_errors,
            "order_violations": self.order_violations,
            "order_violation_samples": self.order_violation_samples,
        }
        if self.committed_readback is not None:
            d["committed_readback"] = {str(p): o for p, o in sorted(self.committed_readback.items())}
        return d


class Scenario:
    def __init__(self, args):
        self.args = args
        self.R = args.records
        self.N = args.partitions
        self.deadline = Deadline(args.timeout_s)
        self.delivered = {}  # value -> (partition, offset)
        self.delivery_errors = 0
        self.delivery_error_samples = []
        self.produced_ok = 0
        self.end_offsets = {}
        self.seen = set()
        self.duplicates = 0
        self.bad_records = 0
        self.delivery_mismatch = 0
        self.runs = [Run("run1"), Run("run2")]
        self.phase_s = {}
        self.timed_out = None
        self._run2_ends = None

    # ----------------------------------------------------------------- bookkeeping
    def on_delivery(self, value, err, partition, offset):
        if err is not None:
            self.delivery_errors += 1
            if len(self.delivery_error_samples) < 5:
                self.delivery_error_samples.append(str(err))
            return
        self.produced_ok += 1
        if partition is not None and offset is not None and offset >= 0:
            self.delivered[value] = (partition, offset)

    def on_record(self, run, partition, offset, key, value):
        """Account one consumed record; returns nothing."""
        run.consumed += 1
        last = run.last_offsets.get(partition)
        if last is not None and offset <= last:
            run.order_violations += 1
            if len(run.order_violation_samples) < 5:
                run.order_violation_samples.append([partition, last, offset])
            log.warning("%s: partition %d offset %d after %d", run.name, partition, offset, last)
        run.last_offsets[partition] = offset
        run.first_offsets.setdefault(partition, offset)
        v = parse_record(key, value)
        if v is None or not (0 <= v < self.R):
            self.bad_records += 1
            return
        if v in self.seen:
            self.duplicates += 1
        self.seen.add(v)
        d = self.delivered.get(v)
        if d is not None and d != (partition, offset):
            self.delivery_mismatch += 1

    def commit_positions(self, run):
        """Offsets to commit for a run: last consumed offset + 1 per partition."""
        return {p: o + 1 for p, o in run.last_offsets.items()}

    def run2_done(self, run2, caught_up_since):
        """(done, caught_up_since). Done when every value was seen, or when every
        partition is caught up to its end offset for CAUGHT_UP_GRACE_S."""
        if len(self.seen) >= self.R:
            return True, caught_up_since
        if self._run2_ends is None:
            self._run2_ends = self.effective_end_offsets()
        ends = self._run2_ends
        if not ends:
            return False, None
        committed1 = self.runs[0].committed
        for p in range(self.N):
            end = ends.get(p)
            if end is None:
                return False, None
            pos = run2.last_offsets[p] + 1 if p in run2.last_offsets else committed1.get(p, 0)
            if pos < end:
                return False, None
        now = time.monotonic()
        if caught_up_since is None:
            return False, now
        return now - caught_up_since >= CAUGHT_UP_GRACE_S, caught_up_since

    def delivered_end_offsets(self):
        """End offset per partition from the delivery reports: highest offset + 1."""
        ends = {}
        for p, o in self.delivered.values():
            if o + 1 > ends.get(p, 0):
                ends[p] = o + 1
        return ends

    def effective_end_offsets(self):
        """max(ListOffsets latest, delivery-report end) per partition, so that a broker
        whose ListOffsets under-reports cannot stop run 2 early."""
        ends = dict(self.end_offsets)
        for p, o in self.delivered_end_offsets().items():
            ends[p] = max(ends.get(p, 0), o)
        return ends

    def result(self, lib, started, error):
        run1, run2 = self.runs
        ends = self.effective_end_offsets()
        resumed = True
        for p in range(self.N):
            start = run1.committed.get(p, 0)  # no commit in run 1: earliest, 0 on a new topic
            end = ends.get(p)
            first = run2.first_offsets.get(p)
            if end is not None and start >= end:
                if first is not None:
                    resumed = False
            elif first != start:
                resumed = False
        missing = [v for v in range(self.R) if v not in self.seen]
        return {
            "lib": lib,
            "produced": self.produced_ok,
            "delivery_errors": self.delivery_errors,
            "delivery_error_samples": self.delivery_error_samples,
            "delivery_offsets_known": len(self.delivered),
            "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
            "delivered_end_offsets": {str(p): o for p, o in sorted(self.delivered_end_offsets().items())},
            "run1": run1.to_json(),
            "run2": run2.to_json(),
            "distinct_values": len(self.seen),
            "missing_count": len(missing),
            "missing": missing[:20],
            "duplicates": self.duplicates,
            "bad_records": self.bad_records,
            "delivery_mismatch": self.delivery_mismatch,
            "resumed_exactly": resumed,
            "order_ok": run1.order_violations == 0 and run2.order_violations == 0,
            "phase_s": self.phase_s,
            "elapsed_s": round(time.monotonic() - started, 3),
            "timed_out": self.timed_out,
            "error": error,
        }

    def phase(self, name, fn):
        t = time.monotonic()
        log.info("phase %s: start", name)
        try:
            return fn()
        finally:
            self.phase_s[name] = round(time.monotonic() - t, 3)
            log.info("phase %s: %.3fs", name, self.phase_s[name])

    def run(self, driver):
        self.phase("create_topic", driver.create_topic)
        self.phase("produce", driver.produce)
        self.end_offsets = self.phase("end_offsets", driver.end_offsets)
        log.info("end offsets %s", self.end_offsets)
        self.phase("run1", lambda: driver.consume(self.runs[0], first=True))
        self.phase("run2", lambda: driver.consume(self.runs[1], first=False))


# ===================================================================== confluent-kafka
class ConfluentDriver:
    lib = "confluent"

    def __init__(self, sc):
        import confluent_kafka
        from confluent_kafka import admin as ck_admin

        self.ck = confluent_kafka
        self.ck_admin = ck_admin
        self.sc = sc
        self.a = sc.args
        log.info("confluent-kafka %s, librdkafka %s", confluent_kafka.version()[0] if isinstance(confluent_kafka.version(), tuple)
                 else confluent_kafka.version(), confluent_kafka.libversion()[0])
        self.admin = ck_admin.AdminClient({
            "bootstrap.servers": self.a.bootstrap,
            "client.id": "klink-scenario-confluent-admin",
            "logger": logging.getLogger("librdkafka.admin"),
        })

    def create_topic(self):
        sc, a = self.sc, self.a
        nt = self.ck_admin.NewTopic(a.topic, num_partitions=sc.N, replication_factor=1)
        futs = self.admin.create_topics([nt], operation_timeout=10, request_timeout=15)
        futs[a.topic].result(timeout=max(1, sc.deadline.left()))
        while True:
            sc.deadline.check("waiting for topic metadata")
            md = self.admin.list_topics(topic=a.topic, timeout=5)
            t = md.topics.get(a.topic)
            if t is not None and t.error is None and len(t.partitions) == sc.N and all(
                    p.leader >= 0 and p.error is None for p in t.partitions.values()):
                return
            time.sleep(0.1)

    def produce(self):
        sc, a = self.sc, self.a
        p = self.ck.Producer({
            "bootstrap.servers": a.bootstrap,
            "client.id": "klink-scenario-confluent-producer",
            "linger.ms": 0 if a.batching == "one" else 5,
            "batch.num.messages": 1 if a.batching == "one" else 10000,
            "acks": "all",
            "message.timeout.ms": int(max(5, sc.deadline.left()) * 1000),
            "logger": logging.getLogger("librdkafka.producer"),
        })

        def cb(v):
            def on_delivery(err, msg):
                if err is not None:
                    sc.on_delivery(v, err, None, None)
                else:
                    sc.on_delivery(v, None, msg.partition(), msg.offset())
            return on_delivery

        for i in range(sc.R):
            while True:
                try:
                    p.produce(a.topic, key=b"k%d" % i, value=b"%d" % i, on_delivery=cb(i))
                    break
                except BufferError:
                    sc.deadline.check("producing (queue full)")
                    p.poll(0.05)
            p.poll(0)
        left = p.flush(max(1, sc.deadline.left()))
        if left:
            raise ScenarioTimeout("producer flush left %d records undelivered" % left)

    def end_offsets(self):
        sc, a = self.sc, self.a
        TP = self.ck.TopicPartition
        req = {TP(a.topic, p): self.ck_admin.OffsetSpec.latest() for p in range(sc.N)}
        futs = self.admin.list_offsets(req, request_timeout=10)
        return {tp.partition: f.result(timeout=max(1, sc.deadline.left())).offset for tp, f in futs.items()}

    def consume(self, run, first):
        sc, a = self.sc, self.a
        TP = self.ck.TopicPartition
        run.client_id = "klink-scenario-confluent-%s" % run.name
        c = self.ck.Consumer({
            "bootstrap.servers": a.bootstrap,
            "client.id": run.client_id,
            "group.id": a.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "logger": logging.getLogger("librdkafka." + run.name),
        })
        target = math.ceil(sc.R * RUN1_FRACTION)
        caught_up = None
        try:
            c.subscribe([a.topic])
            while True:
                if first and run.consumed >= target:
                    break
                if not first:
                    done, caught_up = sc.run2_done(run, caught_up)
                    if done:
                        break
                if sc.deadline.left() <= 0:
                    sc.timed_out = run.name
                    raise ScenarioTimeout("timeout in %s after %d records" % (run.name, run.consumed))
                msgs = c.consume(num_messages=500, timeout=0.2)
                for m in msgs:
                    if m.error() is not None:
                        log.warning("%s: consume error: %s", run.name, m.error())
                        continue
                    if first and run.consumed >= target:
                        break  # not handed to the application: neither counted nor committed
                    sc.on_record(run, m.partition(), m.offset(), m.key(), m.value())
            run.committed = sc.commit_positions(run)
            if run.committed:
                tps = [TP(a.topic, p, o) for p, o in sorted(run.committed.items())]
                res = c.commit(offsets=tps, asynchronous=False)
                run.commit_errors = ["%d: %s" % (tp.partition, tp.error) for tp in res or [] if tp.error]
                back = c.committed([TP(a.topic, p) for p in range(sc.N)], timeout=10)
                run.committed_readback = {tp.partition: tp.offset for tp in back if tp.offset >= 0}
            log.info("%s: consumed %d, committed %s", run.name, run.consumed, run.committed)
        finally:
            c.close()


# ======================================================================= kafka-python
class KafkaPythonDriver:
    lib = "kafka-python"

    def __init__(self, sc):
        import kafka

        self.kafka = kafka
        self.sc = sc
        self.a = sc.args
        log.info("kafka-python %s", kafka.__version__)
        from kafka.admin import KafkaAdminClient
        self.admin = KafkaAdminClient(bootstrap_servers=self.a.bootstrap,
                                      client_id="klink-scenario-kafka-python-admin",
                                      bootstrap_timeout_ms=bootstrap_ms(sc),
                                      request_timeout_ms=15000)

    def create_topic(self):
        sc, a = self.sc, self.a
        self.admin.create_topics({a.topic: {"num_partitions": sc.N, "replication_factor": 1}},
                                 timeout_ms=10000)
        while True:
            sc.deadline.check("waiting for topic metadata")
            try:
                topics = self.admin.describe_topics([a.topic])
            except Exception as e:  # transient metadata errors while the topic appears
                log.info("describe_topics: %r", e)
                topics = []
            for t in topics:
                if t.get("name") == a.topic and t.get("error_code") == 0:
                    parts = t.get("partitions") or []
                    if len(parts) == sc.N and all(p.get("error_code") == 0 and p.get("leader_id", -1) >= 0
                                                  for p in parts):
                        return
            time.sleep(0.1)

    def produce(self):
        sc, a = self.sc, self.a
        p = self.kafka.KafkaProducer(bootstrap_servers=a.bootstrap,
                                     bootstrap_timeout_ms=bootstrap_ms(sc),
                                     client_id="klink-scenario-kafka-python-producer",
                                     linger_ms=0 if a.batching == "one" else 5,
                                     batch_size=0 if a.batching == "one" else 16384,
                                     acks="all",
                                     request_timeout_ms=15000)
        try:
            for i in range(sc.R):
                sc.deadline.check("producing")
                f = p.send(a.topic, key=b"k%d" % i, value=b"%d" % i)
                f.add_callback(lambda md, v=i: sc.on_delivery(v, None, md.partition, md.offset))
                f.add_errback(lambda e, v=i: sc.on_delivery(v, e, None, None))
            p.flush(timeout=max(1, sc.deadline.left()))
        finally:
            p.close(timeout=5)

    def end_offsets(self):
        sc, a = self.sc, self.a
        TP = self.kafka.TopicPartition
        c = self.kafka.KafkaConsumer(bootstrap_servers=a.bootstrap,
                                     bootstrap_timeout_ms=bootstrap_ms(sc),
                                     client_id="klink-scenario-kafka-python-offsets",
                                     enable_auto_commit=False)
        try:
            res = c.end_offsets([TP(a.topic, p) for p in range(sc.N)])
            return {tp.partition: o for tp, o in res.items()}
        finally:
            c.close()

    def consume(self, run, first):
        sc, a = self.sc, self.a
        TP = self.kafka.TopicPartition
        from kafka.structs import OffsetAndMetadata
        run.client_id = "klink-scenario-kafka-python-%s" % run.name
        c = self.kafka.KafkaConsumer(bootstrap_servers=a.bootstrap,
                                     bootstrap_timeout_ms=bootstrap_ms(sc),
                                     client_id=run.client_id,
                                     group_id=a.group,
                                     auto_offset_reset="earliest",
                                     enable_auto_commit=False,
                                     fetch_max_wait_ms=FETCH_WAIT_MS,
                                     session_timeout_ms=SESSION_TIMEOUT_MS,
                                     heartbeat_interval_ms=HEARTBEAT_MS,
                                     max_poll_records=500,
                                     request_timeout_ms=15000)
        target = math.ceil(sc.R * RUN1_FRACTION)
        caught_up = None
        try:
            c.subscribe([a.topic])
            while True:
                if first and run.consumed >= target:
                    break
                if not first:
                    done, caught_up = sc.run2_done(run, caught_up)
                    if done:
                        break
                if sc.deadline.left() <= 0:
                    sc.timed_out = run.name
                    raise ScenarioTimeout("timeout in %s after %d records" % (run.name, run.consumed))
                batch = c.poll(timeout_ms=200, max_records=500)
                for tp, recs in sorted(batch.items(), key=lambda kv: kv[0].partition):
                    for r in recs:
                        if first and run.consumed >= target:
                            break
                        sc.on_record(run, tp.partition, r.offset, r.key, r.value)
            run.committed = sc.commit_positions(run)
            if run.committed:
                c.commit({TP(a.topic, p): OffsetAndMetadata(o, "", -1) for p, o in run.committed.items()})
                back = {}
                for p in range(sc.N):
                    o = c.committed(TP(a.topic, p))
                    if o is not None and o >= 0:
                        back[p] = o
                run.committed_readback = back
            log.info("%s: consumed %d, committed %s", run.name, run.consumed, run.committed)
        finally:
            c.close(autocommit=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, choices=["confluent", "kafka-python"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--log-level", default="INFO")
    # tansu 0.6 answers a fetch that starts inside a record batch from the
    # next batch on, losing the records in between; one record per batch
    # keeps every committed offset on a batch boundary.
    ap.add_argument("--batching", choices=["one", "default"], default="one")
    args = ap.parse_args()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.lib == "kafka-python":
        # kafka-python logs every connection at INFO; keep stderr readable unless DEBUG
        if logging.getLogger().level > logging.DEBUG:
            logging.getLogger("kafka").setLevel(logging.WARNING)

    # Hard stop in case a library call hangs past the deadline (e.g. a close that never returns).
    def hard_timeout(signum, frame):
        print("scenario.py: FAILED: hard timeout (did not finish within --timeout-s + 30s)", file=sys.stderr, flush=True)
        os._exit(2)
    signal.signal(signal.SIGALRM, hard_timeout)
    signal.alarm(int(args.timeout_s) + 30)

    started = time.monotonic()
    sc = Scenario(args)
    error, code = None, 0
    try:
        driver = (ConfluentDriver if args.lib == "confluent" else KafkaPythonDriver)(sc)
        sc.run(driver)
    except (ScenarioTimeout, concurrent.futures.TimeoutError) as e:
        if not str(e):
            e = "a client call did not complete in time"
        error, code = "timeout: %s" % e, 2
        sc.timed_out = sc.timed_out or True
        log.error("%s", error)
    except Exception as e:
        error, code = "%s: %s" % (type(e).__name__, e), 1
        traceback.print_exc(file=sys.stderr)
    try:
        print(json.dumps(sc.result(args.lib, started, error), sort_keys=False), flush=True)
    except Exception:
        traceback.print_exc(file=sys.stderr)
        code = code or 1
    if error:
        print("scenario.py: FAILED: %s" % error, file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
