#!/usr/bin/env python3
"""Outpost's front under load, next to a bare server, in one run.

`outpost serve` runs the hello-world fixture behind a cleartext listener and
a TLS listener (HTTP/3 on the same port over UDP); `bare-server` (hyper and
quinn + h3, no JavaScript, no routing, no limits) answers the same bytes.
Each protocol is driven the same way against both:
  * HTTP/1.1 cleartext: wrk -t1 -c64 -d<D>s
  * HTTP/2 over TLS:    h2load -t1 -c16 -m16 -D<D>
  * HTTP/3:             h3-load -c4 -m16 -d<D> (benches/bin/h3_load.rs)
and the table gives requests/second and Outpost's ratio to the bare server.
Best of R runs per row (these machines are noisy).

Usage (from the repository root):
    cargo build --release -p outpost-cli -p outpost-benches --bins
    python3 benches/ingress_load.py [--duration 10] [--runs 3]

Needs wrk and h2load (Debian: apt-get install wrk nghttp2-client).
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def wrk(port, duration):
    out = run(["wrk", "-t1", "-c64", f"-d{duration}s", f"http://127.0.0.1:{port}/"])
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def h2load(port, duration):
    out = run(["h2load", "-t1", "-c16", "-m16", f"-D{duration}", f"https://127.0.0.1:{port}/"])
    match = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if match is None or int(match.group(3)) > 0:
        sys.exit(f"h2load saw failures:\n{out}")
    if "h2" not in out:
        sys.exit(f"h2load did not negotiate HTTP/2:\n{out}")
    return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))


def h3load(port, duration, ca):
    out = run([os.path.join(RELEASE, "h3-load"), "--url", f"https://127.0.0.1:{port}/", "--ca", ca,
               "-c", "4", "-m", "16", "-d", str(duration)])
    match = re.search(r"([\d.]+) req/s, p50 [\d.]+ ms, (\d+) failed", out)
    if match is None or int(match.group(2)) > 0:
        sys.exit(f"h3-load saw failures:\n{out}")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install wrk nghttp2-client)")
    for tool in ("outpost", "bare-server", "h3-load"):
        if not os.path.exists(os.path.join(RELEASE, tool)):
            sys.exit(f"build first: cargo build --release -p outpost-cli -p outpost-benches --bins ({tool} missing)")

    work = tempfile.mkdtemp(prefix="outpost-ingress-load-")
    certs = os.path.join(work, "certs")
    run([os.path.join(RELEASE, "bare-server"), "--write-cert", certs])
    ca = os.path.join(certs, "ca.pem")
    ports = {name: free_port() for name in ("outpost_http", "outpost_https", "bare_http", "bare_https")}
    with open(os.path.join(work, "node.toml"), "w") as node:
        node.write(f"""data_dir = "state"
[[listeners]]
address = "127.0.0.1:{ports['outpost_http']}"
[[listeners]]
address = "127.0.0.1:{ports['outpost_https']}"
tls = true
[[certificates]]
hosts = ["127.0.0.1", "localhost"]
cert = "{os.path.join(certs, 'cert.pem')}"
key = "{os.path.join(certs, 'key.pem')}"
[[workers]]
path = "{os.path.join(ROOT, 'fixtures', 'hello')}"
[[routes]]
pattern = "*/*"
worker = "hello"
""")
    env = dict(os.environ, RUST_LOG="warn")
    outpost = subprocess.Popen([os.path.join(RELEASE, "outpost"), "serve", "--config", os.path.join(work, "node.toml")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    bare = subprocess.Popen([os.path.join(RELEASE, "bare-server"), "--cert-dir", certs,
                             "--http", str(ports["bare_http"]), "--https", str(ports["bare_https"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports.values():
            wait_for_port(port)
        rows = [
            ("HTTP/1.1 (wrk, cleartext)", lambda p: wrk(p, args.duration), "http"),
            ("HTTP/2 (h2load, TLS)", lambda p: h2load(p, args.duration), "https"),
            ("HTTP/3 (h3-load, QUIC)", lambda p: h3load(p, args.duration, ca), "https"),
        ]
        print(f"{'protocol':28} {'outpost req/s':>14} {'bare req/s':>12} {'ratio':>7}")
        for name, measure, kind in rows:
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(measure(ports[f"outpost_{kind}"]))
                theirs.append(measure(ports[f"bare_{kind}"]))
            best_ours, best_theirs = max(ours), max(theirs)
            print(f"{name:28} {best_ours:14.0f} {best_theirs:12.0f} {best_ours / best_theirs:7.2f}"
                  f"   (runs: outpost {', '.join(f'{v:.0f}' for v in ours)}; bare {', '.join(f'{v:.0f}' for v in theirs)})")
    finally:
        for process in (outpost, bare):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
