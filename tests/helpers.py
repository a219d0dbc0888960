"""Small helpers for integration tests (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

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
