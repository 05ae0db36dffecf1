#!/usr/bin/env python3
"""Where a fault lab run's failed requests come from.

    scripts/error-breakdown.py HISTORY.jsonl FAULTS.tsv

HISTORY is kv-bench's history (its meta line must carry started_unix_ms);
FAULTS is the lab's fault log: one line per fault, tab-separated
`kind node start_ms end_ms` (milliseconds since the Unix epoch; node 0
when the fault has none, `end_ms` when the fault was undone). Every failed
write and read is charged to the fault that was active when it was sent,
or that ended less than --settle seconds before (recovery: gossip, routes,
connections), else to "no fault". Prints availability, then the failures
by fault kind, by error class, and by fault kind and node.
"""

import argparse
import json
import sys
from collections import Counter, defaultdict


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("history")
    parser.add_argument("faults")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after a fault ends still charged to it (3)")
    args = parser.parse_args()

    started = None
    ops = Counter()
    failed = []  # (kind of op, unix ms, error class)
    with open(args.history) as f:
        for line in f:
            event = json.loads(line)
            kind = event.get("type")
            if kind == "meta":
                started = event.get("started_unix_ms")
            elif kind == "write":
                ops["write"] += 1
                if event.get("acked") is None:
                    failed.append(("write", event["invoke_us"], event.get("error") or "unknown"))
            elif kind == "read":
                ops["read"] += 1
            elif kind == "read_failed":
                ops["read"] += 1
                failed.append(("read", event["invoke_us"], event["error"]))
    if started is None:
        sys.exit("error-breakdown: the history's meta line has no started_unix_ms")

    faults = []
    with open(args.faults) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            kind, node, start, end = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
            faults.append((start, end, kind, node))
    faults.sort()

    settle_ms = args.settle * 1000

    def charge(at_ms):
        # The latest fault started before the request that is still active
        # (or settling).
        best = None
        for start, end, kind, node in faults:
            if start <= at_ms <= end + settle_ms:
                best = (kind, node)
        return best or ("no fault", 0)

    by_kind = defaultdict(Counter)
    by_class = defaultdict(Counter)
    by_node = defaultdict(Counter)
    for op, invoke_us, error in failed:
        at = started + invoke_us / 1000
        kind, node = charge(at)
        cls = error.split(":", 1)[0]
        by_kind[kind][op] += 1
        by_class[cls][op] += 1
        by_node[(kind, node)][op] += 1

    total_w = sum(1 for f in failed if f[0] == "write")
    total_r = sum(1 for f in failed if f[0] == "read")
    for name, total in (("reads", total_r), ("writes", total_w)):
        attempted = ops["read" if name == "reads" else "write"]
        share = 100.0 * (attempted - total) / attempted if attempted else 100.0
        print(f"availability {name}: {share:.3f}% ({attempted - total} of {attempted})")
    print()
    print("failures by fault (charged to the fault active when sent, or ended under %.0f s before)" % args.settle)
    print("| fault | writes | reads |")
    print("|---|---|---|")
    for kind, c in sorted(by_kind.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"| {kind} | {c['write']} | {c['read']} |")
    print()
    print("failures by error class")
    print("| class | writes | reads |")
    print("|---|---|---|")
    for cls, c in sorted(by_class.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"| {cls} | {c['write']} | {c['read']} |")
    print()
    print("failures by fault and node")
    print("| fault | node | writes | reads |")
    print("|---|---|---|---|")
    for (kind, node), c in sorted(by_node.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"| {kind} | {node or '-'} | {c['write']} | {c['read']} |")


if __name__ == "__main__":
    main()
