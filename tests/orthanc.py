"""A real Orthanc for tests and benchmarks, configured by ``deploy/orthanc/`` as a PACS admin does.

:func:`start_orthanc` copies ``deploy/orthanc/orthanc.json`` and its Lua
script into a work directory, changes only what a test must (free ports, the
node's port, ``StableAge``, ``LimitFindResults``, extra modalities) and
starts ``/usr/sbin/Orthanc`` with ``TCP_NODELAY=1``, the storage directory and
the node user's password in its environment, as the README says to.
:class:`CountingProxy` stands between a client and Orthanc's REST API and
counts the instance files it served to the end, so a test can tell whether
an instance was downloaded twice whatever happened to the client.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.peers import PEER_ENV, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "orthanc"
ORTHANC = Path("/usr/sbin/Orthanc")
PASSWORD = "test-password"
USER = "dicom-node"


@dataclass
class OrthancServer:
    """A running Orthanc: its ports, its REST session, and how to stop it."""

    http_port: int
    dicom_port: int
    work: Path
    process: subprocess.Popen[bytes]
    ae_title: str = "ORTHANC"

    @property
    def url(self) -> str:
        """REST root without credentials."""
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def url_with_credentials(self) -> str:
        """REST root with the node user's credentials."""
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.http_port}/"

    @property
    def pacs(self) -> str:
        """Its DICOM address, ``AE@host:port``."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def session(self) -> requests.Session:
        """A REST session with the node user's credentials."""
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return session

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        response = self.session().get(self.url + path.lstrip("/"), timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, paths: Iterable[Path]) -> int:
        """POST each file to ``/instances``; return how many."""
        session = self.session()
        count = 0
        for path in paths:
            response = session.post(self.url + "instances", data=path.read_bytes(), timeout=30)
            response.raise_for_status()
            count += 1
        return count

    def log(self) -> str:
        """Orthanc's log so far."""
        return (self.work / "orthanc.log").read_text(errors="replace")

    def stop(self) -> None:
        """Terminate it and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def deploy_config() -> dict[str, Any]:
    """``deploy/orthanc/orthanc.json`` as shipped."""
    config: dict[str, Any] = json.loads((DEPLOY / "orthanc.json").read_text())
    return config


def start_orthanc(
    work: Path,
    *,
    node_port: int | None = None,
    stable_age: int = 1,
    limit_find_results: int = 0,
    lua: bool = True,
    modalities: dict[str, dict[str, Any]] | None = None,
) -> OrthancServer:
    """Start Orthanc with the deploy configuration; skip the test without Orthanc.

    Parameters
    ----------
    work : pathlib.Path
        Configuration, Lua script, storage and log go here.
    node_port : int, optional
        The node's DICOM port (the ``dicom-node`` modality); default: none listening.
    stable_age : int
        Seconds until a study is stable (60 in the deploy file).
    limit_find_results : int
        Orthanc's cap on find answers (0: none).
    lua : bool
        Load the auto-forward script.
    modalities : dict, optional
        More ``DicomModalities`` entries (peers allowed to query and retrieve).
    """
    if not ORTHANC.exists():
        pytest.skip("Orthanc is not installed (the test command installs it)")
    work.mkdir(parents=True, exist_ok=True)
    config = deploy_config()
    http_port, dicom_port = free_port(), free_port()
    config.update(
        HttpPort=http_port,
        DicomPort=dicom_port,
        StableAge=stable_age,
        LimitFindResults=limit_find_results,
        RemoteAccessAllowed=False,  # loopback only in tests
    )
    config["DicomModalities"]["dicom-node"]["Port"] = node_port or free_port()
    config["DicomModalities"].update(modalities or {})
    if lua:
        for script in config["LuaScripts"]:
            shutil.copy(DEPLOY / script, work / script)
    else:
        config["LuaScripts"] = []
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    env = {
        **PEER_ENV,
        "ORTHANC_STORAGE": str(work / "db"),
        "ORTHANC_DICOM_NODE_PASSWORD": PASSWORD,
        "DICOM_NODE_HOST": "127.0.0.1",
    }
    with (work / "orthanc.log").open("wb") as log:
        process = subprocess.Popen(
            [str(ORTHANC), str(work / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
    server = OrthancServer(http_port, dicom_port, work, process)
    try:
        wait_for_port(http_port, process=process)
        wait_for_port(dicom_port, process=process)
    except Exception:
        server.stop()
        raise
    return server


class CountingProxy:
    """A REST proxy in front of Orthanc that counts instance files served whole.

    ``downloads[orthanc_id]`` counts ``GET /instances/{id}/file`` responses
    whose every byte reached the client's socket.
    """

    def __init__(self, target_port: int) -> None:
        self.downloads: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection", "accept-encoding")
                }
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                parts = self.path.split("?")[0].strip("/").split("/")
                if (
                    self.command == "GET"
                    and response.status == 200
                    and len(parts) == 3
                    and parts[0] == "instances"
                    and parts[2] == "file"
                ):
                    with proxy._lock:
                        proxy.downloads[parts[1]] += 1

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, *, user: str = USER, password: str = PASSWORD) -> str:
        """The proxy's REST root, with credentials."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}/"

    def total(self) -> int:
        """Instance files served so far."""
        with self._lock:
            return sum(self.downloads.values())

    def twice(self) -> dict[str, int]:
        """Instances served more than once."""
        with self._lock:
            return {k: v for k, v in self.downloads.items() if v > 1}

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def write_archive(
    directory: Path,
    *,
    dates: tuple[str, ...] = ("20240102", "20240103", "20240104"),
    studies_per_day: int = 2,
    slices: int = 6,
) -> tuple[list[Path], set[str]]:
    """A small archive: CT studies of plain slices on ``dates``, plus one MR study on the second.

    Returns the files to upload and the SOP Instance UIDs of the CT instances
    (what a backfill must bring, and nothing else). Studies of a day are hours
    apart, so an archive capped at one answer is split by StudyTime.
    """
    from tests.factories import write_ct_series

    files: list[Path] = []
    ct_uids: set[str] = set()
    for d, date in enumerate(dates):
        for k in range(studies_per_day):
            paths = write_ct_series(
                directory / f"ct-{date}-{k}",
                slices,
                study_instance_uid=f"1.2.826.0.1.3680043.10.1114.{d}.{k}",
                series_instance_uid=f"1.2.826.0.1.3680043.10.1114.{d}.{k}.1",
                StudyDate=date,
                StudyTime=f"{8 + 3 * k:02d}0000",
                PatientID=f"ARCH-{d}-{k}",
                AccessionNumber=f"ACC{d}{k}",
            )
            files += paths
            ct_uids |= {_sop_instance_uid(p) for p in paths}
    files += write_ct_series(
        directory / "mr",
        3,
        study_instance_uid="1.2.826.0.1.3680043.10.1114.9",
        series_instance_uid="1.2.826.0.1.3680043.10.1114.9.1",
        StudyDate=dates[min(1, len(dates) - 1)],
        StudyTime="100000",
        Modality="MR",
        PatientID="ARCH-MR",
    )
    return files, ct_uids


def _sop_instance_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
