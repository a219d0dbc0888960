#!/usr/bin/env python3
"""Network start latency and published-port throughput (issue #17, item 9), in one test host.

Start to exit, alternating (a shuffled order each round): `pymachine run --rm --network bridge
busybox true` and `--network veth` (and `--network host`, what the network costs) against
`systemd-nspawn -q --network-veth -D ROOTFS /bin/true` (target: pymachine bridge / nspawn veth
<= 0.6) and, where podman runs here, `podman run --rm --network bridge busybox true` (the same
busybox, exported by pymachine and loaded into podman).

Throughput: 100 MB sent by the test host to 127.0.0.1:PORT, published by a container whose
busybox `nc -l` reads it, against the same transfer to an `nc -l` of the test host itself on
its uplink address (target: >= 0.9). busybox `nc` reads 1 KB a call, so this way also
measures the container's seccomp filter (see the README's Networking). The other way, as a web
server's download: a 100 MB file fetched from a container's busybox `httpd` (sendfile(2): a few
syscalls) against the same file fetched from the test host's own `httpd`. Where podman runs, both
transfers to and from its container's published port as well (its default filter too).

Everything runs in the test host's own network namespace (tools/testhost.py).

With `--baseline DIR` (another install's bin dir, an older pymachine), its `run --rm --network
bridge busybox true` is timed in the same alternation: a before/after on the same load.

`--settle SECONDS` (default 0.1) pauses after each command: nspawn leaves its veth to the
kernel's asynchronous cleanup of the namespace, pymachine leaves the bridge to a detached child
(netsetup.release), podman its own; without the pause, that work lands on whichever command runs
next (`--settle 0`: back to back, as a loop of starts would meet it).

    python3 bench/bench_network.py [--runs 20] [--bin DIR] [--baseline DIR] [--settle SECONDS] [--transfers N]
                                   [--skip veth,podman,throughput]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_exec import add_baseline_option, add_bin_option, run_driver  # noqa: E402

DRIVER = r"""
import json, os, random, socket, subprocess, sys, tempfile, time
runs, rootfs = int(sys.argv[1]), sys.argv[2]
cmds = {
    "host": ["pymachine", "run", "--rm", "--network", "host", "busybox", "true"],
    "bridge": ["pymachine", "run", "--rm", "--network", "bridge", "busybox", "true"],
    "veth": ["pymachine", "run", "--rm", "--network", "veth", "busybox", "true"],
    "nspawn": ["systemd-nspawn", "-q", "--network-veth", "-D", rootfs, "/bin/true"],
    # vfs: podman's overlay driver refuses the test host's overlayfs root (no fuse-overlayfs here)
    "podman": ["podman", "--storage-driver=vfs", "run", "--rm", "--network", "bridge", "localhost/busybox:latest",
               "true"],
}
notes = {}
settle = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
transfers = int(sys.argv[5]) if len(sys.argv) > 5 else 3
if len(sys.argv) > 3 and sys.argv[3]:
    cmds["baseline"] = [os.path.join(sys.argv[3], "pymachine"), *cmds["bridge"][1:]]
    cmds["baseline-host"] = [os.path.join(sys.argv[3], "pymachine"), *cmds["host"][1:]]
skip = set(sys.argv[6].split(",")) if len(sys.argv) > 6 and sys.argv[6] else set()
for key in skip & set(cmds):
    del cmds[key]
archive = os.path.join(tempfile.mkdtemp(), "busybox.tar")
try:
    if "podman" not in cmds:
        raise OSError("skipped")
    subprocess.run(["pymachine", "image", "export", "busybox", archive], check=True, capture_output=True)
    podman = ["podman", "--storage-driver=vfs"]
    subprocess.run([*podman, "load", "-q", "-i", archive], check=True, capture_output=True)
    subprocess.run([*podman, "tag", subprocess.run([*podman, "images", "-q"], capture_output=True, text=True,
                    check=True).stdout.split()[0], "localhost/busybox:latest"], check=True, capture_output=True)
    subprocess.run(cmds["podman"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
except (subprocess.CalledProcessError, OSError, IndexError) as e:
    notes["podman"] = f"not run: {getattr(e, 'stderr', b'') or e}"[:300]
    cmds.pop("podman", None)
times = {k: [] for k in cmds}
for cmd in cmds.values():
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
order = list(cmds)
for _ in range(runs):
    random.shuffle(order)  # no command always follows the same one (podman's heavy run, say)
    for name in order:
        cmd = cmds[name]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        times[name].append(time.perf_counter() - t)
        time.sleep(settle)

SIZE = 100 * 1024 * 1024
def connect(host, port):  # the listener may not be up yet: a few seconds of retries
    for _ in range(100):
        try:
            return socket.create_connection((host, port), timeout=10)
        except OSError:
            time.sleep(0.05)
    return socket.create_connection((host, port), timeout=10)

def send(host, port):
    chunk = b"x" * (1 << 20)
    s = connect(host, port)
    t = time.perf_counter()
    for _ in range(SIZE // len(chunk)):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the reader closes once it has it all
    s.close()
    return time.perf_counter() - t

def fetch(host, port):
    s = connect(host, port)
    t = time.perf_counter()
    s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    got = 0
    while chunk := s.recv(1 << 20):
        got += len(chunk)
    s.close()
    assert got > SIZE, got
    return time.perf_counter() - t

def wait_listening(port):
    for _ in range(100):
        try:
            socket.create_connection(("10.231.0.2", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)

# The file is written (not sparse) on each side's root, an overlayfs both: sendfile(2) from tmpfs
# (the container's /tmp) is slower than from overlayfs, which would be a file system's cost, not the network's.
SERVE = f"mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={SIZE >> 20} 2>/dev/null && " \
        "exec httpd -f -p 80 -h /www"
throughput = {"published": [], "host": [], "published-get": [], "host-get": [], "podman-nc": [], "podman-get": []}
www = tempfile.mkdtemp(dir="/var/tmp")
subprocess.run(["dd", "if=/dev/zero", f"of={www}/big", "bs=1M", f"count={SIZE >> 20}"], check=True,
               capture_output=True)
have_busybox = subprocess.run(["which", "busybox"], capture_output=True).returncode == 0
for i in range(0 if "throughput" in skip else transfers):
    name = f"bench-net-{os.getpid()}-{i}"
    subprocess.run(["pymachine", "run", "-d", "--name", name, "--network", "bridge", "-p", "18080:80", "busybox",
                    "sh", "-c", "nc -l -p 80 > /dev/null"], check=True, capture_output=True)
    try:
        throughput["published"].append(SIZE / send("127.0.0.1", 18080) / 1e6)
    finally:
        subprocess.run(["pymachine", "rm", "-f", name], capture_output=True)
    listener = subprocess.Popen(["busybox", "nc", "-l", "-p", "18081"], stdout=subprocess.DEVNULL) \
        if have_busybox else \
        subprocess.Popen(["python3", "-c", "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,"
                          "socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',18081));s.listen();c,_=s.accept()\n"
                          "while c.recv(1<<20): pass\nc.close()"])
    try:
        throughput["host"].append(SIZE / send("10.231.0.2", 18081) / 1e6)
    finally:
        listener.wait(30)
    if not have_busybox:
        continue
    # The other way, as a web server's download: busybox httpd sends the file with sendfile(2),
    # so the server makes a handful of syscalls and the figure is the network path's.
    subprocess.run(["pymachine", "run", "-d", "--name", name, "--network", "bridge", "-p", "18080:80", "busybox",
                    "sh", "-c", SERVE], check=True, capture_output=True)
    try:
        wait_listening(18080)
        throughput["published-get"].append(SIZE / fetch("127.0.0.1", 18080) / 1e6)
    finally:
        subprocess.run(["pymachine", "rm", "-f", name], capture_output=True)
    server = subprocess.Popen(["busybox", "httpd", "-f", "-p", "18081", "-h", www])
    try:
        wait_listening(18081)
        throughput["host-get"].append(SIZE / fetch("10.231.0.2", 18081) / 1e6)
    finally:
        server.kill()
        server.wait()
    # podman, both ways, on its published port of the uplink address (its default filter too)
    for key, script, measure in (("podman-nc", "nc -l -p 80 > /dev/null", send), ("podman-get", SERVE, fetch)):
        if "podman" not in cmds:
            break
        pod = subprocess.run(["podman", "--storage-driver=vfs", "run", "-d", "--network", "bridge", "-p",
                              "18082:80", "localhost/busybox:latest", "sh", "-c", script],
                             capture_output=True, text=True)
        if pod.returncode != 0:
            notes[key] = f"not run: {pod.stderr.strip()}"[:300]
            continue
        try:
            if measure is fetch:
                wait_listening(18082)
            throughput[key].append(SIZE / measure("10.231.0.2", 18082) / 1e6)
        except (OSError, AssertionError) as e:
            notes[key] = f"failed: {e}"[:300]
        finally:
            subprocess.run(["podman", "--storage-driver=vfs", "rm", "-f", pod.stdout.strip()], capture_output=True)
subprocess.run(["rm", "-rf", www])
print(json.dumps({"times": times, "throughput": throughput, "notes": notes}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    add_bin_option(ap)
    add_baseline_option(ap)
    ap.add_argument("--settle", type=float, default=0.1, metavar="SECONDS",
                    help="pause after each command, for the kernel's deferred work to finish (default 0.1)")
    ap.add_argument("--transfers", type=int, default=3, help="100 MB transfers each way (default 3)")
    ap.add_argument("--skip", default="", metavar="LIST",
                    help="leave out some of veth,podman,throughput (comma-separated): more rounds in the same time")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    out = run_driver(args.bin, DRIVER, args.runs, args.baseline, str(args.settle), str(args.transfers),
                     args.skip)
    if out is None:
        return 1
    print(f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    med = {k: statistics.median(v) * 1000 for k, v in out["times"].items()}
    print(f"start to exit, {args.runs} runs each, alternating, {args.settle} s apart, median:")
    labels = {"host": "pymachine run --rm --network host busybox true  ",
              "bridge": "pymachine run --rm --network bridge busybox true",
              "veth": "pymachine run --rm --network veth busybox true  ",
              "nspawn": "systemd-nspawn -q --network-veth -D ROOTFS true ",
              "podman": "podman run --rm --network bridge busybox true   ",
              "baseline": "the same as bridge with --baseline's pymachine  ",
              "baseline-host": "the same as host with --baseline's pymachine    "}
    for key, label in labels.items():
        if key in med:
            print(f"  {label}  {med[key]:7.1f} ms")
        else:
            print(f"  {label}  {out['notes'].get(key, 'not run')}")
    ratio = med["bridge"] / med["nspawn"]
    print(f"  ratio bridge/nspawn-veth                          {ratio:7.2f}   (target <= 0.60)")
    if "veth" in med:
        print(f"  ratio veth/nspawn-veth                            {med['veth'] / med['nspawn']:7.2f}")
    print(f"  the network's cost (bridge - host)                {med['bridge'] - med['host']:7.1f} ms")
    if "baseline" in med:
        print(f"  ratio bridge/baseline bridge                      {med['bridge'] / med['baseline']:7.2f}")
        print(f"  the baseline's network cost                       {med['baseline'] - med['baseline-host']:7.1f} ms")
    if "podman" in med:
        print(f"  ratio bridge/podman                               {med['bridge'] / med['podman']:7.2f}")
    if not out["throughput"]["host"]:
        return 0
    tp = {k: statistics.median(v) for k, v in out["throughput"].items() if v}
    print(f"100 MB, median of {args.transfers} (MB/s):")
    print(f"  sent to 127.0.0.1:PORT, a container's nc reads it  {tp['published']:7.0f}")
    print(f"  sent to the test host's own address, its nc        {tp['host']:7.0f}")
    ratio = tp["published"] / tp["host"]
    print(f"  ratio                                              {ratio:7.2f}   (target >= 0.90)")
    if "host-get" in tp:
        print(f"  fetched from 127.0.0.1:PORT, a container's httpd  {tp['published-get']:7.0f}")
        print(f"  fetched from the test host's own httpd            {tp['host-get']:7.0f}")
        ratio = tp["published-get"] / tp["host-get"]
        print(f"  ratio                                              {ratio:7.2f}   (target >= 0.90)")
    if "podman-nc" in tp:
        print(f"  sent to podman's published port (uplink), its nc   {tp['podman-nc']:7.0f}"
              f"   ratio to the host {tp['podman-nc'] / tp['host']:.2f}")
    elif "podman-nc" in out["notes"]:
        print(f"  podman's nc: {out['notes']['podman-nc']}")
    if "podman-get" in tp:
        print(f"  fetched from podman's published port (uplink)     {tp['podman-get']:7.0f}"
              f"   ratio to the host {tp['podman-get'] / tp['host-get']:.2f}")
    elif "podman-get" in out["notes"]:
        print(f"  podman's httpd: {out['notes']['podman-get']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
