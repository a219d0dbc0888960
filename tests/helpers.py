"""Small helpers for integration tests (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable
from typing import TypeAlias

from testhost import LocalHost, TestHost

AnyHost: TypeAlias = TestHost | LocalHost


def pm(host: AnyHost, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `pymachine ARGS...` inside the host."""
    return host.run(["pymachine", *args], timeout=timeout, input=input)


def machine_names(host: AnyHost) -> list[str]:
    out = host.run(["machinectl", "list", "--no-legend", "--no-pager"], check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = 20, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def read_until(proc: subprocess.Popen[str], text: str, *, timeout: float = 60) -> str:
    """Read proc's stdout until `text` appears; return all that was read. AssertionError at the deadline
    or at the end of the output. (It reads the pipe itself: the text wrapper's readline could block
    past the deadline; proc.communicate() still gets the rest afterwards.)"""
    assert proc.stdout is not None, "read_until needs stdout=PIPE"
    fd, wanted, data = proc.stdout.fileno(), text.encode(), b""
    deadline = time.monotonic() + timeout
    while wanted not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{text!r} did not come within {timeout:g} s; it printed {data!r}")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the output ended (exit {proc.wait(10)}) before {text!r}: {data!r}")
            data += chunk
    return data.decode(errors="replace")


# Run inside the test host with `python3 -c HTTP_GET URL`: GET with retries, the body on stdout.
HTTP_GET = """
import sys, time, urllib.request
for _ in range(50):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            sys.stdout.write(r.read().decode()); sys.exit(0)
    except OSError as e:
        last = e; time.sleep(0.1)
sys.exit(f"no answer: {last}")
"""
