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
