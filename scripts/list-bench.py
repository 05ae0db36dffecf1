#!/usr/bin/env python3
"""Key listing rate: loads N keys (100-byte values) through the Python
client, then lists them three times and prints keys/s per run.

    KV_CERTS_DIR=/tmp/kv-example-cluster KV_NODES=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \\
        /tmp/kv-py/bin/python scripts/list-bench.py 100000

Needs the kvstore package (clients/python) and a running cluster; the keys
it writes (lb:00000000...) stay."""

import os
import sys
import time

from kvstore import Client, KvError, Put


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    kv = Client(os.environ.get("KV_NODES", "127.0.0.1:7001").split(","))
    started = time.monotonic()
    for start in range(0, n, 1024):
        batch = [Put(f"lb:{i:08}", b"x" * 100) for i in range(start, min(n, start + 1024))]
        failed = [r for r in kv.write_many(batch) if isinstance(r, KvError)]
        if failed:
            print(f"load failed: {failed[0]}", file=sys.stderr)
            return 1
        print(f"\rloaded {min(n, start + 1024):,} of {n:,}", end="", file=sys.stderr)
    loaded = time.monotonic() - started
    print(f"\nloaded {n:,} keys at {n / loaded:,.0f} writes/s", file=sys.stderr)
    for run in range(1, 4):
        started = time.monotonic()
        listed = kv.list("lb:")
        took = time.monotonic() - started
        if len(listed.keys) != n:
            print(f"listed {len(listed.keys)} keys, expected {n}", file=sys.stderr)
            return 1
        print(f"run {run}: listed {n:,} keys in {took:.2f} s: {n / took:,.0f} keys/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
