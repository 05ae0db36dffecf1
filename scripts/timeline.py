#!/usr/bin/env python3
"""What the nodes did in each second of a kv-bench run.

  timeline.py sample OUT.csv HTTP1,HTTP2,... PID1,PID2,... [--interval 0.25]
      Samples each node's /metrics (engine counters) and its CPU time from
      /proc every interval until killed (SIGTERM or SIGINT), one CSV line per
      node and sample.

  timeline.py join BENCH_TIMELINE.csv SAMPLES.csv [--slow-ms 5]
      Lines kv-bench's --timeline up with the samples: for each second of the
      run, its p99 and max and, per node, the CPU it used and the flushes,
      compactions, write stalls and log syncs that happened in it. Marks the
      seconds whose p99 is over --slow-ms, and compares the seconds with a
      flush or compaction on some node against those without.
"""
import csv
import os
import signal
import sys
import time
import urllib.request

# The counters sampled, and the column each is shown under per second.
COLUMNS = [
    ("kv_lsm_flushes_total", "flush"),
    ("kv_lsm_compactions_total", "comp"),
    ("kv_lsm_write_stalls_total", "stall"),
    ("kv_lsm_log_syncs_total", "syncs"),
    ("kv_anti_entropy_peer_keys_repaired_total", "ae"),
]
COUNTERS = [name for name, _ in COLUMNS]
BACKGROUND = ("kv_lsm_flushes_total", "kv_lsm_compactions_total")


def usage(message):
    sys.stderr.write(f"timeline.py: {message}\n{__doc__}")
    sys.exit(2)


def scrape(address):
    """The counters above from one node's /metrics (summed over labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as response:
        text = response.read().decode()
    values = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            try:
                values[name] += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return values


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; fields[0] is the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(out, addresses, pids, interval):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["unix_ms", "node", "cpu_s"] + COUNTERS)
        while not stop:
            for node, (address, pid) in enumerate(zip(addresses, pids), start=1):
                try:
                    values = scrape(address)
                    cpu = cpu_seconds(pid)
                except (OSError, ValueError):
                    continue
                writer.writerow(
                    [int(time.time() * 1000), node, f"{cpu:.2f}"]
                    + [int(values[c]) for c in COUNTERS]
                )
            f.flush()
            time.sleep(interval)


def join(bench_path, samples_path, slow_ms):
    with open(bench_path) as f:
        seconds = [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]
    samples = {}
    with open(samples_path) as f:
        for row in csv.DictReader(f):
            node = int(row["node"])
            samples.setdefault(node, []).append(
                (int(row["unix_ms"]), float(row["cpu_s"]), {c: float(row[c]) for c in COUNTERS})
            )
    if not seconds or not samples:
        usage("nothing to join: an empty timeline or no samples")

    def at(node, unix_ms):
        """The last sample of a node at or before unix_ms (or its first)."""
        rows = samples[node]
        best = rows[0]
        for row in rows:
            if row[0] > unix_ms:
                break
            best = row
        return best

    nodes = sorted(samples)
    header = f"{'s':>4} {'ops':>6} {'p99ms':>7} {'maxms':>7}"
    for node in nodes:
        header += f" | n{node} cpu%" + "".join(f" {short:>5}" for _, short in COLUMNS)
    print(header)
    busy, quiet = [], []
    for s in seconds:
        start, end = s["unix_ms"], s["unix_ms"] + 1000
        p99, peak = s["p99_us"] / 1000, s["max_us"] / 1000
        line = f"{s['second']:>4} {s['ops']:>6} {p99:>7.1f} {peak:>7.1f}"
        background = False
        for node in nodes:
            a, b = at(node, start), at(node, end)
            span = max((b[0] - a[0]) / 1000, 1e-3)
            delta = {c: b[2][c] - a[2][c] for c in COUNTERS}
            cpu = 100 * (b[1] - a[1]) / span
            background = background or any(delta[c] for c in BACKGROUND)
            line += f" | {cpu:>7.0f}" + "".join(f" {delta[c]:>5.0f}" for c in COUNTERS)
        if p99 > slow_ms:
            line += "  <- slow"
        print(line)
        (busy if background else quiet).append(p99)

    def summary(name, values):
        if not values:
            return f"{name}: none"
        slow = sum(1 for v in values if v > slow_ms)
        ordered = sorted(values)
        return (
            f"{name}: {len(values)} seconds, {slow} with p99 over {slow_ms:g} ms,"
            f" median p99 {ordered[len(ordered) // 2]:.1f} ms, worst {ordered[-1]:.1f} ms"
        )

    print(summary("seconds with a flush or compaction on some node", busy))
    print(summary("seconds without", quiet))


def main(argv):
    if len(argv) < 2:
        usage("say sample or join")
    if argv[1] == "sample":
        if len(argv) not in (5, 7):
            usage("sample OUT.csv HTTP,... PID,... [--interval S]")
        interval = float(argv[6]) if len(argv) == 7 and argv[5] == "--interval" else 0.25
        addresses, pids = argv[3].split(","), argv[4].split(",")
        if len(addresses) != len(pids):
            usage("as many pids as addresses")
        sample(argv[2], addresses, pids, interval)
    elif argv[1] == "join":
        if len(argv) not in (4, 6):
            usage("join BENCH_TIMELINE.csv SAMPLES.csv [--slow-ms MS]")
        slow_ms = float(argv[5]) if len(argv) == 6 and argv[4] == "--slow-ms" else 5.0
        join(argv[2], argv[3], slow_ms)
    else:
        usage(f"unknown command {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
