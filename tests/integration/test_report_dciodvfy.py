"""dciodvfy (dicom3tools) finds no error in our SR and montage; dsrdump (dcmtk) renders the SR."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from dicom_node.results.montage import MontageRow, build_key_image_montage
from tests.factories import SR_MODEL as MODEL
from tests.factories import SR_UIDS as UIDS
from tests.factories import sr_evidence, sr_inputs
from tests.peers import dcmtk

pytestmark = pytest.mark.integration


def _dciodvfy(path) -> list[str]:
    tool = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not shutil.os.path.exists(tool):
        pytest.skip("dicom3tools dciodvfy is not installed (the test command installs it)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).splitlines()
    # 99DCMNODE is a private coding scheme (PS3.16 8.2: "99" prefix), declared in
    # the CodingSchemeIdentificationSequence; dciodvfy warns on any it does not know.
    return [
        line for line in lines if line.startswith(("Error", "Warning")) and "99DCMNODE" not in line
    ]


def test_sr_and_montage_pass_dciodvfy_and_dsrdump_renders(tmp_path) -> None:
    from dicom_node.results.sr import build_similarity_sr

    evidence = sr_evidence()  # the nodules' centre slices are in it: image regions too
    findings, similar, priors = sr_inputs()
    sr_path, montage_path = tmp_path / "sr.dcm", tmp_path / "montage.dcm"
    build_similarity_sr(evidence, findings, similar, priors, MODEL, UIDS).save_as(sr_path)
    roi = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    build_key_image_montage(
        evidence, [MontageRow("Nodule 1", roi, [("#1 d=14", roi)])], UIDS, model=MODEL
    ).save_as(montage_path)
    assert _dciodvfy(sr_path) == []
    assert _dciodvfy(montage_path) == []
    dump = subprocess.run([dcmtk("dsrdump"), str(sr_path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    for text in (
        "Comprehensive 3D SR",
        "Nodule 1",
        "Nodule 2",
        "Similar prior cases (other patients)",
        "Same patient: earlier measurements",
        "CASE-AB12",
    ):
        assert text in dump.stdout
