#!/usr/bin/env python3
"""Opens each node's status page in headless Chromium, as an operator's
browser would, saves a screenshot, and checks what the rendered page says:
every member alive, and a line in the requests-per-second chart (requests
in the last minutes). Waits up to --wait seconds per node for the page to
show both (the page samples its counters every 5 s).

    scripts/status-page-check.py --members 3 --shots DIR 127.0.0.1:8001 127.0.0.1:8002 ...

Installs chromium with apt-get when it is missing (Debian's package).
Exits non-zero, saying why, when a page does not show what it should."""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if subprocess.call(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], **quiet) != 0:
        subprocess.check_call(["apt-get", "update", "-q"], **quiet)
        subprocess.check_call(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], **quiet)
    return shutil.which("chromium") or sys.exit("status-page-check: chromium did not install")


def headless(chrome: str, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1300"]
    done = subprocess.run([chrome, *flags, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed: {done.stderr[-500:]}")
    return done.stdout


def problems(dom: str, members: int) -> list:
    found = []
    alive = len(re.findall(r'<td class="ok">alive</td>', dom))
    if alive != members:
        found.append(f"{alive} members shown alive, expected {members}")
    chart = re.search(r'<svg[^>]*aria-label="requests per second".*?</svg>', dom, re.S)
    if not chart:
        found.append("no requests-per-second chart")
    elif "<polyline" not in chart.group(0):
        found.append("the requests-per-second chart has no line (no requests in the last minutes?)")
    if "<h2>Warnings</h2>" not in dom:
        found.append("no warnings section")
    links = len(re.findall(r'<td><a href="http://[^"]+/">', dom))
    if links != members - 1:
        found.append(f"{links} links to other nodes' pages, expected {members - 1}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", help="host:port of each node's HTTP listener")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--shots", default="target/status-pages")
    parser.add_argument("--wait", type=float, default=20.0)
    args = parser.parse_args()
    chrome = browser()
    os.makedirs(args.shots, exist_ok=True)
    failed = False
    for page in args.pages:
        url = f"http://{page}/"
        deadline = time.monotonic() + args.wait
        while True:
            dom = headless(chrome, "--dump-dom", url)
            found = problems(dom, args.members)
            if not found or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        shot = os.path.join(args.shots, page.replace(":", "-") + ".png")
        headless(chrome, f"--screenshot={os.path.abspath(shot)}", url)
        if found:
            failed = True
            print(f"{url}: " + "; ".join(found), file=sys.stderr)
        else:
            print(f"{url}: {args.members} members alive, requests charted, the other pages linked; screenshot {shot}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
