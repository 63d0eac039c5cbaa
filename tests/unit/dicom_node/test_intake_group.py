"""C-STORE intake: the partial decode and the group commit of concurrent associations."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

from dicom_node.intake.group import GroupCommit
from dicom_node.intake.parse import decode_before_pixels
from storage.errors import CatalogError
from tests.factories import ct_slice, instance_record


def _encoded(syntax: str, cut: int = 0) -> bytes:
    """The dataset as a peer sends it in a C-STORE (pynetdicom's encoder)."""
    ds = ct_slice(1, study_instance_uid="1.2", series_instance_uid="1.2.3", rows=32, columns=16)
    raw = encode(ds, syntax == ImplicitVRLittleEndian, True)
    assert raw is not None
    return raw[: len(raw) - cut] if cut else raw


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_decode_stops_before_pixel_data_and_measures_it(syntax: str) -> None:
    dataset, extent = decode_before_pixels(_encoded(syntax), syntax)
    assert "PixelData" not in dataset and dataset.Rows == 32 and dataset.SOPInstanceUID
    assert extent is not None and extent.element == 0x7FE00010
    assert extent.available == 32 * 16 * 2 and not extent.encapsulated
    _, short = decode_before_pixels(_encoded(syntax, cut=100), syntax)
    assert short is not None and short.available == 32 * 16 * 2 - 100


def test_decode_of_a_dataset_without_pixels() -> None:
    ds = pydicom.Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "SR"
    raw = encode(ds, False, True)
    assert raw is not None
    dataset, extent = decode_before_pixels(raw, ExplicitVRLittleEndian)
    assert extent is None and dataset.Modality == "SR"


class _Intake:
    """A catalog intake that holds the first group until released; ``bad`` rows fail."""

    def __init__(self, bad: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.first_in = threading.Event()
        self.release = threading.Event()
        self.groups: list[list[str]] = []
        self.bad = bad

    def record_instances(self, records):  # noqa: ANN001
        self.groups.append([r.sop_instance_uid for r in records])
        if len(self.groups) == 1:
            self.first_in.set()
            assert self.release.wait(30)
        if self.bad & {r.sop_instance_uid for r in records}:
            raise CatalogError("a bad row")
        return [True] * len(records)

    def record_instance(self, record):  # noqa: ANN001
        if record.sop_instance_uid in self.bad:
            raise CatalogError("a bad row")
        return True


class _Store:
    def __init__(self) -> None:
        self.synced: list[list[Path]] = []

    def sync_directories(self, directories) -> None:  # noqa: ANN001
        self.synced.append(list(directories))


class _Catalog:
    def __init__(self, intake: _Intake) -> None:
        self.intake = intake


def _commit_concurrently(group: GroupCommit, intake: _Intake, sops: list[str]) -> dict:
    """The first commit holds the catalog; the others queue behind it as one group."""
    results: dict[str, object] = {}

    def one(sop: str) -> None:
        try:
            results[sop] = group.commit(instance_record(sop), (Path("/d") / sop[-1],))
        except CatalogError as exc:
            results[sop] = exc

    first = threading.Thread(target=one, args=(sops[0],))
    first.start()
    assert intake.first_in.wait(30)
    others = [threading.Thread(target=one, args=(s,)) for s in sops[1:]]
    for t in others:
        t.start()
    with group._condition:  # all queued behind the first group
        assert group._condition.wait_for(lambda: len(group._waiting) == len(others), 30)
    intake.release.set()
    for t in [first, *others]:
        t.join(30)
    return results


def test_concurrent_commits_share_one_transaction_and_one_fsync_per_directory() -> None:
    intake, store = _Intake(), _Store()
    group = GroupCommit(store, _Catalog(intake))  # type: ignore[arg-type]
    sops = [f"1.2.3.{i}" for i in range(1, 7)]
    results = _commit_concurrently(group, intake, sops)
    assert results == {s: True for s in sops}
    assert intake.groups == [sops[:1], sorted(sops[1:], key=intake.groups[1].index)]
    assert (group.groups, group.instances) == (2, 6)
    assert sorted(len(set(d)) for d in store.synced) == [1, 5]


def test_one_bad_row_fails_alone() -> None:
    intake, store = _Intake(bad={"1.2.3.4"}), _Store()
    group = GroupCommit(store, _Catalog(intake))  # type: ignore[arg-type]
    sops = [f"1.2.3.{i}" for i in range(1, 6)]
    results = _commit_concurrently(group, intake, sops)
    assert isinstance(results.pop("1.2.3.4"), CatalogError)
    assert results == {s: True for s in sops if s != "1.2.3.4"}
