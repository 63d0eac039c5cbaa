"""What a node builds for its role: receiving and answering only, or processing too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_a_node_that_only_receives_and_answers_never_imports_torch(tmp_path) -> None:
    """``serve --no-worker`` starts faster and lighter: the model's version, not the network."""
    code = f"""
import dataclasses, sys
from dicom_node.app import Node
from dicom_node.model import shipped_model_dir
from dicom_node.settings import load_settings
settings = load_settings(environ={{}}, overrides={{"data_dir": {str(tmp_path)!r}}})
settings = dataclasses.replace(settings, worker=dataclasses.replace(settings.worker, threads=0))
node = Node(settings)
assert node.steps == (), node.steps
version = node.similarity_index.model_version
assert (shipped_model_dir() / "model_card.json").read_text().count(version) == 1
node.catalog.close()
print("torch imported:", "torch" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch imported: False"


def test_a_worker_shares_the_data_directory_a_serving_node_holds(tmp_path) -> None:
    """``dicom-node worker`` takes no lock (it may run beside ``serve``); it may not serve."""
    import dataclasses

    import pytest

    from dicom_node.app import Node
    from dicom_node.settings import load_settings
    from storage.errors import DataDirectoryInUse
    from storage.lock import DataDirectoryLock

    settings = load_settings(environ={}, overrides={"data_dir": tmp_path})
    settings = dataclasses.replace(settings, worker=dataclasses.replace(settings.worker, threads=0))
    serving = DataDirectoryLock(tmp_path)
    serving.acquire()
    try:
        with pytest.raises(DataDirectoryInUse, match=r"in use by pid \d+"):
            Node(settings)
        worker = Node(settings, exclusive=False)
        try:
            assert worker.lock is None
            with pytest.raises(RuntimeError, match="may only run workers"):
                worker.start(listen=True)
        finally:
            worker.catalog.close()
        assert serving.held
    finally:
        serving.release()
