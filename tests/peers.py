"""Helpers for tests and benchmarks that talk to real peers: dcmtk tools, ports, waiting.

They wait on sockets and state, never on fixed sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries (newest), or None."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return candidates[-1].parent if candidates else None


@contextmanager
def postgresql_server(root: Path, *, fsync: bool = False) -> Iterator[str]:
    """A PostgreSQL server of its own in ``root`` on a free loopback port; yields its URL.

    Started from Debian's binaries, as the ``postgres`` user when running as
    root (initdb refuses root), and stopped on exit; its log is ``root/server.log``. ``fsync`` off by default:
    tests and the read-path benchmarks do not measure commit durability.

    Raises
    ------
    FileNotFoundError
        PostgreSQL is not installed (``deploy/test.sh`` installs it).
    """
    import pwd

    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (the test command installs it)")
    data = root / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o755)
        for parent in root.parents:  # postgres must traverse to its directory
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "--no-sync"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    log = (root / "server.log").open("ab")
    server = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(root), "-c", f"fsync={'on' if fsync else 'off'}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, process=server)
        ready = [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        wait_until(
            lambda: subprocess.run(ready, capture_output=True).returncode == 0,
            what="PostgreSQL ready",
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def start_storescp(
    port: int, out: Path, *, ae_title: str = "PACS", unique_files: bool = False
) -> subprocess.Popen[bytes]:
    """dcmtk ``storescp`` receiving into ``out`` on ``port``, listening when this returns.

    ``unique_files`` (``+uf``): one file per received object, so that an
    object received twice shows as two files (dcmtk's ``-uf`` is the default,
    a file named by the SOP Instance UID, which a second receipt overwrites).
    The caller terminates it.
    """
    out.mkdir(parents=True, exist_ok=True)
    options = ["+uf"] if unique_files else []
    proc = subprocess.Popen(
        [dcmtk("storescp"), *options, "-od", str(out), "-aet", ae_title, str(port)],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process=proc)
    return proc
