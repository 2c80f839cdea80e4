"""Small confluent-kafka programs for the routing tests (proto-tests/routing.rs).

Each subcommand prints one JSON line on stdout when done; logs go to stderr.

  produce  --bootstrap B --topic T --count N [--prefix P] [--rate R] [--idempotent]
           acks=all, non-idempotent unless --idempotent. With --rate, records are spread over time so
           a route can change mid-stream. Reports delivered/failed counts.
  count    --bootstrap B --topic T
           Reads every partition from the beginning (no group) until idle;
           reports the values seen.
  group    --bootstrap B --topic T --group G --seconds S
           Subscribes in group G, consumes and commits; prints READY on stdout once
           it has an assignment and a commit, then keeps going for S seconds.
  create   --bootstrap B --topic T --partitions N
  groups   --bootstrap B --topic unused
           Lists the consumer groups the cluster knows.
  committed --bootstrap B --topic T --group G
           The group's committed offsets for T, as the cluster answers them.
  login    --bootstrap B --topic unused
           Lists topics; reports ok and the errors a refused login raises.

security() says how the environment sets TLS and SASL up.

--topic of produce may name several topics, comma-separated: records alternate
between them, all from the one producer instance.
"""
import argparse
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic



def security():
    """How to reach klink, from the environment (the security tests);
    plaintext when none of it is set:
      KLINK_CLIENT_CA          TLS, trusting this CA
      KLINK_CLIENT_CERT/_KEY   and presenting this certificate (mTLS)
      KLINK_CLIENT_USER        a SASL login as this user, with
      KLINK_CLIENT_PASSWORD    this password and
      KLINK_CLIENT_MECHANISM   this mechanism (default SCRAM-SHA-512)"""
    env = os.environ
    conf = {}
    tls = bool(env.get("KLINK_CLIENT_CA"))
    sasl = bool(env.get("KLINK_CLIENT_USER"))
    if tls:
        conf["ssl.ca.location"] = env["KLINK_CLIENT_CA"]
        if env.get("KLINK_CLIENT_CERT"):
            conf["ssl.certificate.location"] = env["KLINK_CLIENT_CERT"]
            conf["ssl.key.location"] = env["KLINK_CLIENT_KEY"]
    if sasl:
        conf["sasl.mechanism"] = env.get("KLINK_CLIENT_MECHANISM", "SCRAM-SHA-512")
        conf["sasl.username"] = env["KLINK_CLIENT_USER"]
        conf["sasl.password"] = env.get("KLINK_CLIENT_PASSWORD", "")
    if tls or sasl:
        conf["security.protocol"] = {
            (True, False): "SSL", (False, True): "SASL_PLAINTEXT", (True, True): "SASL_SSL",
        }[(tls, sasl)]
    return conf


def login(a):
    """Connects and asks for the topics, reporting what the client's error
    callback heard (a refused login shows there) instead of waiting out
    delivery timeouts."""
    errors = []
    admin = AdminClient({
        "bootstrap.servers": a.bootstrap, **security(),
        "client.id": "routing-login",
        "error_cb": lambda e: errors.append(str(e)),
    })
    # Short tries, so that a refusal heard by the callback ends it early.
    for _ in range(16):
        try:
            topics = sorted(admin.list_topics(timeout=0.5).topics)
            print(json.dumps({"ok": True, "topics": topics, "errors": errors}), flush=True)
            return
        except KafkaException as e:
            last = str(e)
        admin.poll(0)  # serves error_cb
        if any("Authentication" in e for e in errors):
            break
    print(json.dumps({"ok": False, "topics": [], "errors": errors + [last]}), flush=True)


def log(*a):
    print(time.strftime("%H:%M:%S"), "routing.py:", *a, file=sys.stderr, flush=True)


def produce(a):
    p = Producer({
        "bootstrap.servers": a.bootstrap, **security(),
        "client.id": "routing-producer",
        "acks": "all",
        "enable.idempotence": a.idempotent,
        "linger.ms": 0,
        "batch.num.messages": 1,
        "message.timeout.ms": 30000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    delivered, failed, errors = [], 0, []

    def on_delivery(err, msg):
        nonlocal failed
        if err is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(str(err))
        else:
            delivered.append(msg.value().decode())

    gap = 1.0 / a.rate if a.rate else 0
    topics = a.topic.split(",")
    start = time.time()
    for i in range(a.count):
        topic = topics[i % len(topics)]
        p.produce(topic, key=f"k{i}".encode(), value=f"{a.prefix}{i}".encode(), on_delivery=on_delivery)
        p.poll(0)
        if gap:
            wait = start + (i + 1) * gap - time.time()
            if wait > 0:
                # poll(timeout) returns at the first delivery report; sleep
                # keeps the pace.
                time.sleep(wait)
    left = p.flush(60)
    print(json.dumps({"delivered": len(delivered), "failed": failed, "unflushed": left, "errors": errors}), flush=True)


def count(a):
    c = Consumer({
        "bootstrap.servers": a.bootstrap, **security(),
        "group.id": "routing-count-unused",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "client.id": "routing-count",
    })
    md = c.list_topics(a.topic, timeout=10).topics.get(a.topic)
    if md is None or md.error is not None:
        print(json.dumps({"count": 0, "values": [], "error": str(md.error if md else "missing")}), flush=True)
        return
    c.assign([TopicPartition(a.topic, p, 0) for p in md.partitions])
    values, idle_since = [], time.time()
    while time.time() - idle_since < 1.5:
        msgs = c.consume(500, 0.2)
        for m in msgs:
            if m.error() is None:
                values.append(m.value().decode())
        if msgs:
            idle_since = time.time()
    c.close()
    print(json.dumps({"count": len(values), "values": values}), flush=True)


def group(a):
    assignments, errors, consumed = [], [], 0
    c = Consumer({
        "bootstrap.servers": a.bootstrap, **security(),
        "group.id": a.group,
        "client.id": "routing-group",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
        "error_cb": lambda e: errors.append(str(e)),
    })
    c.subscribe([a.topic], on_assign=lambda _c, ps: assignments.append(len(ps)))
    ready, deadline, commits, commit_errors = False, None, 0, []
    while True:
        m = c.poll(0.1)
        if m is not None and m.error() is None:
            consumed += 1
        if assignments:
            try:
                c.commit(asynchronous=False)
                commits += 1
            except KafkaException as e:
                commit_errors.append(str(e))
            if not ready and commits:
                ready = True
                deadline = time.time() + a.seconds
                print("READY", flush=True)
        if deadline and time.time() > deadline:
            break
    c.close()
    print(json.dumps({"assignments": assignments, "consumed": consumed, "commits": commits,
                      "commit_errors": commit_errors[-5:], "errors": errors[-5:]}), flush=True)


def groups(a):
    admin = AdminClient({"bootstrap.servers": a.bootstrap, **security()})
    listed = admin.list_consumer_groups(request_timeout=10).result()
    print(json.dumps({"groups": sorted(g.group_id for g in listed.valid)}), flush=True)


def committed(a):
    c = Consumer({"bootstrap.servers": a.bootstrap, **security(), "group.id": a.group, "client.id": "routing-committed"})
    md = c.list_topics(a.topic, timeout=10).topics.get(a.topic)
    # The topic need not exist on this cluster for the group to have offsets
    # for it (a group moved before its topic): ask for partition 0 at least.
    partitions = md.partitions if md and md.error is None else [0]
    parts = [TopicPartition(a.topic, p) for p in partitions]
    offsets = {str(tp.partition): tp.offset for tp in c.committed(parts, timeout=10)}
    c.close()
    print(json.dumps({"committed": offsets}), flush=True)


def create(a):
    admin = AdminClient({"bootstrap.servers": a.bootstrap, **security()})
    for _, f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)]).items():
        f.result(15)
    print(json.dumps({"created": a.topic}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["produce", "count", "group", "create", "groups", "committed", "login"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--group", default="")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--idempotent", action="store_true")
    a = ap.parse_args()
    {"produce": produce, "count": count, "group": group, "create": create, "groups": groups,
     "committed": committed, "login": login}[a.command](a)


if __name__ == "__main__":
    main()
