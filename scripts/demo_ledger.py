"""The demo's ledger check (scripts/demo.sh): reads the producers' report
(proto-tests/clients/flips.py ledger), the consumer's (flips.py consume)
and every record of the topic on the target (flips.py dump), and says
whether every acknowledged record is on the target exactly once, in
producer order per partition, and whether the consumer saw each.

  demo_ledger.py LEDGER.json CONSUMED.json TARGET_DUMP.json
"""
import json
import sys
from collections import Counter


def main():
    ledger = json.load(open(sys.argv[1]))
    consumed = json.load(open(sys.argv[2]))
    dumped = json.load(open(sys.argv[3]))
    on_target = Counter(r[2] for r in dumped["records"])
    seen = set(consumed["values"])
    ok = True
    for name in ("idem", "plain", "split"):
        report = ledger[name]
        acked = [f"{name}:{r[2]}" for r in report["acked"] if r[0] == "orders"]
        twice = sum(1 for v in acked if on_target[v] > 1)
        missing = sum(1 for v in acked if on_target[v] == 0)
        unseen = sum(1 for v in acked if v not in seen)
        print(f"  {name:6} acknowledged {len(acked):6}  on the target once: {len(acked) - twice - missing:6}"
              f"  twice: {twice}  missing: {missing}  failed: {report['failed']}  fatal: {report['fatal']}"
              f"  not seen by the consumer: {unseen}")
        ok &= twice == 0 and missing == 0 and report["failed"] == 0 and not report["fatal"]
    order = {}
    for partition, _, value in sorted(dumped["records"]):
        name, _, n = value.partition(":")
        if name == "acks0" or not n.isdigit():
            continue
        last = order.get((partition, name))
        if last is not None and int(n) <= last:
            print(f"  out of order on partition {partition}: {name} {last} before {n}")
            ok = False
        order[(partition, name)] = int(n)
    print("ledger:", "every acknowledged record is on the target exactly once, in order" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
