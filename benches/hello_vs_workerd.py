#!/usr/bin/env python3
"""Outpost next to workerd on the hello-world fixture, in one run.

Measures, for each runtime serving fixtures/hello/worker.js on loopback:
  * start-up: time from spawning the server process to the first 200
    response (the client polls every 0.5 ms), median and spread of N runs;
  * throughput: requests/second under `wrk -t2 -c32 -d10s`, best of R runs.

Usage (from the repository root, after `cargo build --release -p outpost-cli`):
    python3 benches/hello_vs_workerd.py [--runs 20] [--wrk-runs 3] [--workerd PATH]

workerd comes from the npm package @cloudflare/workerd-linux-64; the script
installs it under benches/.peers/ when --workerd is not given. wrk comes from
Debian (`apt-get install wrk`).
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "fixtures", "hello")
PEERS = os.path.join(ROOT, "benches", ".peers")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port):
    """One GET /; True on a 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return s.recv(16).startswith(b"HTTP/1.1 200")


def wait_ready(port, proc, deadline_s=30):
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if ask(port):
                return
        except OSError:
            time.sleep(0.0005)
    raise RuntimeError("server never answered")


class Runtime:
    def __init__(self, name, command_for_port):
        self.name = name
        self.command_for_port = command_for_port

    def spawn(self, port):
        return subprocess.Popen(self.command_for_port(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def startup_ms(runtime, runs):
    samples = []
    for _ in range(runs):
        port = free_port()
        start = time.perf_counter()
        proc = runtime.spawn(port)
        try:
            wait_ready(port, proc)
            samples.append((time.perf_counter() - start) * 1000)
        finally:
            stop(proc)
    return samples


def throughput(runtime, wrk_runs):
    port = free_port()
    proc = runtime.spawn(port)
    try:
        wait_ready(port, proc)
        # Warm up (JIT, connection setup) before measuring.
        subprocess.run(["wrk", "-t2", "-c32", "-d2s", f"http://127.0.0.1:{port}/"], capture_output=True, check=True)
        results = []
        for _ in range(wrk_runs):
            out = subprocess.run(
                ["wrk", "-t2", "-c32", "-d10s", "--latency", f"http://127.0.0.1:{port}/"],
                capture_output=True, text=True, check=True,
            ).stdout
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            p50 = re.search(r"50%\s+([\d.]+\w+)", out).group(1)
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            socket_errors = re.search(r"Socket errors: (.*)", out)
            results.append((rps, p50, errors.group(1) if errors else "0", socket_errors.group(1) if socket_errors else "none"))
        return results
    finally:
        stop(proc)


def find_workerd(explicit):
    if explicit:
        return explicit
    binary = os.path.join(PEERS, "node_modules", "@cloudflare", "workerd-linux-64", "bin", "workerd")
    if not os.path.exists(binary):
        os.makedirs(PEERS, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--prefix", PEERS, "@cloudflare/workerd-linux-64"], check=True)
    return binary


def workerd_runtime(binary):
    workdir = tempfile.mkdtemp(prefix="workerd-hello-")
    shutil.copy(os.path.join(FIXTURE, "worker.js"), os.path.join(workdir, "worker.js"))

    def command(port):
        config = os.path.join(workdir, f"config-{port}.capnp")
        with open(config, "w") as f:
            f.write(f"""using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [ (name = "main", worker = .hello) ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);
const hello :Workerd.Worker = (
  modules = [ (name = "worker.js", esModule = embed "worker.js") ],
  compatibilityDate = "2024-09-23",
);
""")
        return [binary, "serve", config]

    return Runtime("workerd", command)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="start-up samples per runtime")
    parser.add_argument("--wrk-runs", type=int, default=3, help="10 s wrk runs per runtime")
    parser.add_argument("--outpost", default=os.path.join(ROOT, "target", "release", "outpost"))
    parser.add_argument("--workerd", help="path to a workerd binary")
    args = parser.parse_args()

    if not os.path.exists(args.outpost):
        sys.exit(f"{args.outpost} is missing: run `cargo build --release -p outpost-cli` first")
    data_dir = tempfile.mkdtemp(prefix="outpost-bench-")
    outpost = Runtime("outpost", lambda port: [args.outpost, "dev", FIXTURE, "--port", str(port), "--data-dir", data_dir, "--no-watch"])
    runtimes = [outpost, workerd_runtime(find_workerd(args.workerd))]

    print(f"machine: {os.cpu_count()} cores; wrk -t2 -c32 -d10s; start-up over {args.runs} runs\n")
    rows = []
    for runtime in runtimes:
        samples = startup_ms(runtime, args.runs)
        runs = throughput(runtime, args.wrk_runs)
        best = max(runs, key=lambda r: r[0])
        rows.append((runtime.name, statistics.median(samples), min(samples), max(samples), best, [r[0] for r in runs]))

    print(f"{'runtime':<10} {'start p50 ms':>12} {'min':>7} {'max':>7} {'req/s best':>11} {'p50 lat':>8}  all runs req/s; non-2xx; socket errors")
    for name, p50, lo, hi, best, all_rps in rows:
        print(f"{name:<10} {p50:>12.1f} {lo:>7.1f} {hi:>7.1f} {best[0]:>11.0f} {best[1]:>8}  "
              f"{', '.join(f'{r:.0f}' for r in all_rps)}; {best[2]}; {best[3]}")
    base = rows[1]
    ours = rows[0]
    print(f"\noutpost/workerd: start-up {ours[1] / base[1]:.2f}x the time, throughput {ours[4][0] / base[4][0]:.2f}x")


if __name__ == "__main__":
    main()
