#!/usr/bin/env python3
"""Sends every fixture's requests to Outpost and to workerd and compares.

For each fixtures/<name>/ with a cases.json, both runtimes serve the same
worker files; each case's request goes to both, and the status, the headers
the case lists, and the body bytes are compared. Differences are printed;
cases whose expectation is Outpost-specific (its 500 body, its user agent)
are expected to differ and are marked so.

Usage (from the repository root, after `cargo build --release -p outpost-cli`):
    python3 benches/conformance_vs_workerd.py [--workerd PATH]
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from hello_vs_workerd import find_workerd, free_port, stop  # noqa: E402

MODULE_KINDS = {".js": "esModule", ".mjs": "esModule", ".json": "json", ".wasm": "wasm",
                ".txt": "text", ".html": "text", ".htm": "text", ".css": "text", ".md": "text"}


def wait_port(port, proc):
    for _ in range(3000):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("server never listened")


def capnp_string(value):
    return json.dumps(value)


def workerd_config(fixture_dir, workdir, port):
    """Copies the fixture into workdir and writes a workerd config for it."""
    config = {}
    toml_path = os.path.join(fixture_dir, "outpost.toml")
    if os.path.exists(toml_path):
        with open(toml_path, "rb") as f:
            config = tomllib.load(f)
    main = config.get("main", "worker.js")
    modules = []
    for dirpath, _, files in os.walk(fixture_dir):
        for file in sorted(files):
            path = os.path.relpath(os.path.join(dirpath, file), fixture_dir)
            kind = MODULE_KINDS.get(os.path.splitext(file)[1])
            if kind is None or file == "cases.json":
                continue
            os.makedirs(os.path.dirname(os.path.join(workdir, path)) or workdir, exist_ok=True)
            shutil.copy(os.path.join(fixture_dir, path), os.path.join(workdir, path))
            modules.append((path, kind))
    modules.sort(key=lambda m: m[0] != main)
    module_lines = ",\n    ".join(f"(name = {capnp_string(name)}, {kind} = embed {capnp_string(name)})" for name, kind in modules)
    bindings = []
    for key, value in config.get("vars", {}).items():
        if isinstance(value, str):
            bindings.append(f"(name = {capnp_string(key)}, text = {capnp_string(value)})")
        else:
            bindings.append(f"(name = {capnp_string(key)}, json = {capnp_string(json.dumps(value))})")
    service_worker = "export default" not in open(os.path.join(fixture_dir, main)).read()
    if service_worker:
        body = f'serviceWorkerScript = embed {capnp_string(main)}'
    else:
        body = f"modules = [\n    {module_lines}\n  ]"
    path = os.path.join(workdir, "config.capnp")
    with open(path, "w") as f:
        f.write(f"""using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [ (name = "main", worker = .w), (name = "internet", network = (allow = ["private", "public"])) ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
);
const w :Workerd.Worker = (
  {body},
  bindings = [ {", ".join(bindings)} ],
  compatibilityDate = "2024-09-23",
  globalOutbound = "internet",
);
""")
    return path


def request(port, case):
    req = case["request"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"host": f"127.0.0.1:{port}", **req.get("headers", {})}
    body = req.get("body")
    conn.request(req.get("method", "GET"), req["path"], body=body.encode() if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    result = (response.status, {k.lower(): response.getheader(k) for k in case["response"].get("headers", {})}, data)
    conn.close()
    return result


def attempt(port, case):
    try:
        return request(port, case)
    except OSError as err:
        return ("no response", {}, str(err).encode())


def outpost_specific(case):
    """Cases whose expectation is about Outpost's own choices."""
    text = json.dumps(case["response"])
    return "the worker threw an exception" in text or "Outpost-Workers" in text or "x-request-id" in text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outpost", default=os.path.join(ROOT, "target", "release", "outpost"))
    parser.add_argument("--workerd")
    args = parser.parse_args()
    workerd = find_workerd(args.workerd)
    fixtures = sorted(d for d in os.listdir(os.path.join(ROOT, "fixtures"))
                      if os.path.exists(os.path.join(ROOT, "fixtures", d, "cases.json")))
    same = differ = expected_differ = 0
    for name in fixtures:
        fixture_dir = os.path.join(ROOT, "fixtures", name)
        toml_path = os.path.join(fixture_dir, "outpost.toml")
        if os.path.exists(toml_path) and "kv_namespaces" in open(toml_path).read():
            # workerd serves KV bindings only through a separate KV service.
            print(f"{name}: skipped (KV bindings)")
            continue
        cases = json.load(open(os.path.join(fixture_dir, "cases.json")))
        workdir = tempfile.mkdtemp(prefix=f"conformance-{name}-")
        data_dir = tempfile.mkdtemp(prefix="outpost-data-")
        o_port, w_port = free_port(), free_port()
        o = subprocess.Popen([args.outpost, "dev", fixture_dir, "--port", str(o_port), "--data-dir", data_dir, "--no-watch"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w = subprocess.Popen([workerd, "serve", workerd_config(fixture_dir, workdir, w_port), "--experimental"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(o_port, o)
            try:
                wait_port(w_port, w)
            except RuntimeError as err:
                print(f"{name}: workerd did not start ({err}): {w.stderr.read().decode()[:500]}")
                continue
            for case in cases:
                ours, theirs = (attempt(port, case) for port in (o_port, w_port))
                if ours == theirs:
                    same += 1
                    continue
                mark = "expected (Outpost-specific)" if outpost_specific(case) else "DIFFERS"
                if outpost_specific(case):
                    expected_differ += 1
                else:
                    differ += 1
                print(f"{name}/{case['name']}: {mark}")
                print(f"    outpost: {ours[0]} {ours[1]} {ours[2][:200]!r}")
                print(f"    workerd: {theirs[0]} {theirs[1]} {theirs[2][:200]!r}")
        finally:
            stop(o)
            stop(w)
    print(f"\n{same} cases answered identically, {differ} differ, {expected_differ} differ by design")


if __name__ == "__main__":
    main()
