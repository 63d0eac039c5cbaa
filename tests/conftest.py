"""Shared fixtures: settings on tmp_path, free ports, running nodes, dcmtk peers.

Fixtures wait on sockets, never on sleeps, and restore every global they
touch (pynetdicom's ``_config``, ``os.environ``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real data beside the checkout (``../shared/data``); users do not have
#: it, so every test that needs it skips without it.
SHARED_DATA = REPO.parent / "shared" / "data"

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


@pytest.fixture(autouse=True)
def _restore_globals() -> Iterator[None]:
    from pynetdicom import _config

    saved_config = {k: getattr(_config, k) for k in dir(_config) if k.isupper()}
    saved_env = dict(os.environ)
    import pydicom.config

    saved_validation = (
        pydicom.config.settings.reading_validation_mode,
        pydicom.config.settings.writing_validation_mode,
    )
    yield
    (
        pydicom.config.settings.reading_validation_mode,
        pydicom.config.settings.writing_validation_mode,
    ) = saved_validation
    for key, value in saved_config.items():
        setattr(_config, key, value)
    os.environ.clear()
    os.environ.update(saved_env)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Any]:
    """Build validated settings in ``tmp_path`` from keyword overrides.

    Section values are given as dicts: ``make_settings(series={"idle_seconds": 1})``.
    """
    from dicom_node.settings import Settings, _apply, validate

    def _make(**values: Any) -> Settings:
        base = Settings()
        table: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "host": "127.0.0.1",
            "port": 0,
            "storage": {"min_free_mb": 0},
            "series": {"idle_seconds": 1.0, "check_interval_seconds": 0.1},
            "similarity": {"port": 0},
        }
        for key, value in values.items():
            if isinstance(value, dict):
                table.setdefault(key, {}).update(value)
            else:
                table[key] = str(value) if isinstance(value, Path) else value
        settings = _apply(Settings, base, table, "test")
        validate(settings)
        return settings

    return _make


@pytest.fixture
def start_node() -> Iterator[Callable[..., Any]]:
    """Start in-process nodes; every one is stopped at teardown."""
    from dicom_node.app import Node

    nodes: list[Node] = []

    def _start(settings: Any, **kwargs: Any) -> Node:
        from dicom_node.processing import RecordingProcessor

        # Tests of the DICOM edge record processing; the AI pipeline is opted into.
        kwargs.setdefault("processor", RecordingProcessor())
        node = Node(settings, **kwargs)
        node.start()  # returns with the socket bound and listening
        nodes.append(node)
        return node

    yield _start
    for node in nodes:
        node.stop()


class NodeProcess:
    """``dicom-node serve`` in a child process (for kill -9 tests)."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log = data_dir.parent / f"node-{port}.log"
        self.env = {**os.environ, "DICOM_NODE_SIMILARITY_PORT": "0", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_node",
                    "-v",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--host",
                    "127.0.0.1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
        wait_for_port(self.port, process=self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def _make(env: dict[str, str] | None = None) -> NodeProcess:
        proc = NodeProcess(tmp_path / "data", free_port(), env)
        started.append(proc)
        return proc

    yield _make
    for proc in started:
        proc.stop()


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


def which(tool: str) -> str | None:
    return shutil.which(tool)


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgresql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server on a free loopback port, for the session.

    Started from Debian's binaries as the ``postgres`` user when the tests run
    as root (initdb refuses root). Skips when PostgreSQL is not installed.
    """
    import pwd

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (the test command installs it)")
    root = tmp_path_factory.mktemp("pg")
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
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        [
            *as_user,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(root),
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=server)
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(30)


def shared_archive(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present (real data is beside the checkout only)")
    return path


def _extracted(name: str, factory: pytest.TempPathFactory) -> Path:
    """``../shared/data/<name>`` extracted into a fresh temporary folder (skips without it)."""
    import tarfile

    archive = shared_archive(name)
    target = factory.mktemp(name.split(".")[0])
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture(scope="session")
def lidc_nodules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real LIDC-IDRI nodule crops, extracted once per session (skips without them)."""
    return _extracted("lidc-nodules.tar.gz", tmp_path_factory) / "lidc-nodules"


@pytest.fixture(scope="session")
def lidc_0001_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real LIDC-IDRI-0001 series folder (slices + XML), extracted once (skips without it)."""
    return next(_extracted("LIDC-IDRI-0001.tar.gz", tmp_path_factory).rglob("*.xml")).parent


@pytest.fixture(scope="session")
def lidc_0001_volume(lidc_0001_dir: Path) -> Any:
    """LIDC-IDRI-0001 as the node reads it (1 mm grid)."""
    from ai.volume import load_series

    return load_series(sorted(lidc_0001_dir.glob("*.dcm")))
