"""Helpers for tests and benchmarks that talk to real peers: dcmtk tools, ports, waiting.

They wait on sockets and state, never on fixed sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# dcmtk by full path: pynetdicom installs commands of the same names in the venv.
DCMTK = Path("/usr/bin")
#: Environment for dcmtk tools and Orthanc: without TCP_NODELAY loopback
#: transfers are about ten times slower.
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    """Full path of a dcmtk tool, or skip the test if dcmtk is not installed."""
    path = DCMTK / tool
    if not path.exists():
        pytest.skip(f"dcmtk {tool} is not installed (the test command installs it)")
    return str(path)


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    process: subprocess.Popen[Any] | None = None,
) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll a state predicate (catalog rows, files) until true or time out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached after {timeout} s")


def run_peer(
    args: list[str], *, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool with TCP_NODELAY=1, capturing its output."""
    result = subprocess.run(args, env=PEER_ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result
