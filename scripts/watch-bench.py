#!/usr/bin/env python3
"""Change feed delivery: writes N keys of one prefix from T threads
through the Python client while a watch of the prefix runs, and prints
the write rate, the delivery rate and the delay from a write's send to
its change arriving (p50, p99, max).

    KV_CERTS_DIR=/tmp/kv-example-cluster KV_NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \\
        /tmp/kv-py/bin/python scripts/watch-bench.py 20000 4

Needs the kvstore package (clients/python) and a running cluster; the keys
it writes (wb:<run>:...) stay."""

import os
import sys
import threading
import time
import uuid

from kvstore import Client


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    kv = Client(os.environ.get("KV_NODES", "127.0.0.1:7001").split(","))
    prefix = f"wb:{uuid.uuid4().hex[:8]}:"
    sent = {}
    arrived = {}
    changes = 0
    with kv.watch(prefix) as watch:

        def write(t):
            for i in range(t, n, threads):
                key = f"{prefix}{i:08}".encode()
                sent[key] = time.monotonic()
                kv.put(key, b"x" * 100)

        started = time.monotonic()
        writers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for w in writers:
            w.start()
        deadline = None
        while len(arrived) < n:
            if deadline is None and not any(w.is_alive() for w in writers):
                written = time.monotonic()
                deadline = written + 60
            if deadline is not None and time.monotonic() > deadline:
                print(f"only {len(arrived)} of {n} keys arrived", file=sys.stderr)
                return 1
            change = watch.next(timeout=1.0)
            if change is None:
                continue
            changes += 1
            arrived.setdefault(change.key, time.monotonic())
        done = time.monotonic()
        for w in writers:
            w.join()
        if deadline is None:
            written = time.monotonic()
    delays = sorted((arrived[k] - sent[k]) * 1000 for k in arrived)
    print(
        f"{n:,} writes from {threads} threads in {written - started:.2f} s: "
        f"{n / (written - started):,.0f} writes/s; every change arrived after "
        f"{done - started:.2f} s ({changes:,} changes, {changes - n} repeated)"
    )
    print(
        f"delay from send to change: p50 {percentile(delays, 0.5):.1f} ms, "
        f"p99 {percentile(delays, 0.99):.1f} ms, max {delays[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
