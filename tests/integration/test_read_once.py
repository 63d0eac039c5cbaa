"""One received series through the job runner: its files are read once for headers, once whole.

Before the redesign a series' files were read four times (qualification
headers, the volume, the SR's evidence, the outbox's transfer syntax). Here
every read of a stored file goes through ``InstanceStore.open``; the test
counts the bytes each open reads.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ai.phantom import TEST_GEOMETRY, write_cohort
from dicom_node.app import Node
from dicom_node.intake.series import complete_idle_series
from dicom_node.net.scu import SendReport, StoreResponse
from storage.catalog import ResultKind, SeriesState
from tests.factories import receive_files

pytestmark = pytest.mark.integration


class CountedFile:
    """A read-only file that counts the bytes read through it."""

    def __init__(self, handle: Any, reads: list[int]) -> None:
        self._handle = handle
        self._reads = reads
        self._reads.append(0)

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._handle.read(size)
        self._reads[-1] += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


class AcceptAll:
    """A destination that acknowledges everything (the outbox's SCU seam)."""

    def send(self, destination, objects, on_response=None) -> SendReport:
        responses = tuple(StoreResponse(0, "Success") for _ in objects)
        for position, response in enumerate(responses):
            on_response(position, response)
        return SendReport(None, responses)


def _series_of(node: Node, cohort: Path) -> dict[str, str]:
    """Receive the cohort as a PACS would; ``{patient ID: series UID}``."""
    received = receive_files(node.ingest, sorted((cohort / "dicom").rglob("*.dcm")))
    return {str(ds.PatientID): str(ds.SeriesInstanceUID) for ds in received}


def test_a_processed_series_is_read_headers_once_and_pixel_data_once(
    tmp_path, tiny_model_dir, make_settings, monkeypatch
) -> None:
    write_cohort(
        tmp_path / "cohort",
        patients=2,
        seed=5,
        studies_per_patient=1,
        geometry=TEST_GEOMETRY,
        anatomy_scale=0.6,
    )
    settings = make_settings(
        worker={"model_dir": str(tiny_model_dir)},
        qualification={"min_lung_volume_ml": 100.0},
        similarity={"matches_per_nodule": 2},
        outbox={"destinations": ["PACS@127.0.0.1:104"]},
    )
    node = Node(settings)  # not started: the runner is driven directly, no network
    try:
        prior_uid, index_uid = _series_of(node, tmp_path / "cohort").values()
        complete_idle_series(node.catalog, 0)
        node.runner.run(prior_uid)  # another patient, so that similar cases exist
        node.outbox.scu = AcceptAll()
        assert len(node.outbox.run_once()) == 2

        reads: dict[str, list[int]] = defaultdict(list)
        open_file = node.store.open
        monkeypatch.setattr(
            node.store, "open", lambda path: CountedFile(open_file(path), reads[path])
        )
        job = node.runner.run(index_uid)
        delivered = node.outbox.run_once()

        assert job is not None and job.outcome is not None
        assert job.outcome.state is SeriesState.REPORTED, job.outcome.reason
        files = node.catalog.workflow.series_instance_paths(index_uid)
        sizes = {path: node.store.path_of(path).stat().st_size for path in files}
        assert set(reads) == set(files)  # no other file was opened
        for path, counts in reads.items():
            # One open stopped before the pixel data, one read the whole file
            # (pydicom peeks a few bytes twice while parsing the file meta).
            assert len(counts) == 2, (path, counts)
            headers, whole = counts
            size = sizes[path]
            assert headers < size / 2 and size <= whole < size + 256, (path, counts, size)
        assert len(delivered) == 2  # the SR and the key images, sent without reading the series
        assert sum(len(c) for c in reads.values()) == 2 * len(files)

        # similarity.matches_per_nodule reaches the SR: two similar cases per nodule at most.
        (sr,) = [
            r
            for r in node.catalog.intake.generated_results()
            if r.kind is ResultKind.SIMILARITY_SR and r.source_series_instance_uid == index_uid
        ]
        document = pydicom.dcmread(node.store.path_of(sr.relative_path))
        counts = [
            sum(
                1
                for item in group.ContentSequence
                if item.ValueType == "CONTAINER"
                and item.ConceptNameCodeSequence[0].CodeValue == "SIMILAR-CASES"
                for _ in item.ContentSequence
            )
            for group in _measurement_groups(document)
        ]
        assert counts and max(counts) == 2, counts
    finally:
        node.catalog.close()
        node.lock.release()


def _measurement_groups(document: pydicom.Dataset) -> list[pydicom.Dataset]:
    (imaging,) = [
        item
        for item in document.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"
    ]
    return list(imaging.ContentSequence)
