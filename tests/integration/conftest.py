"""Integration tier: real DICOM peers (dcmtk, pynetdicom) on loopback, nodes in and out of process.

Nodes started here listen on free ports (``port = 0``) and are stopped at
teardown; processes are waited for on their sockets, never with sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import free_port, wait_for_port, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_node() -> Iterator[Callable[..., Any]]:
    """Start in-process nodes; every one is stopped at teardown."""
    from dicom_node.app import Node

    nodes: list[Node] = []

    def _start(settings: Any, **kwargs: Any) -> Node:
        from dicom_node.processing.jobs import RecordingStep

        # Tests of the DICOM edge record processing; the AI steps are opted into.
        kwargs.setdefault("steps", [RecordingStep()])
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
        # The port is bound before recovery; node.json is written once serving.
        wait_until(lambda: self.runtime().get("pid") == self.pid, what="the node serving")

    def runtime(self) -> dict[str, Any]:
        """``node.json`` of the running node ({} before it is written)."""
        try:
            return dict(json.loads((self.data_dir / "node.json").read_text()))
        except (OSError, ValueError):
            return {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return int(self.process.pid)

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained hashing model, written the way ``dicom-node train`` writes one.

    It checks plumbing (states, catalog rows, index, results), not quality.
    """
    import torch

    from ai.hashing.model import HashNet, HashNetConfig
    from ai.hashing.serialization import weights_to_bytes, weights_version
    from dicom_node.model import CARD_FILE, MODEL_FILE

    torch.manual_seed(0)
    config = HashNetConfig(growth=4, stem_channels=8, embedding_dim=16)
    weights = weights_to_bytes(HashNet(config).eval())
    folder = tmp_path_factory.mktemp("model")
    (folder / MODEL_FILE).write_bytes(weights)
    card = {
        "name": "untrained test model",
        "version": weights_version(weights),
        "config": {"model": config.__dict__},
    }
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder
