"""The similarity index kept current from the catalog: snapshot + the rows after it."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from dicom_node.errors import IndexNotReady
from dicom_node.retrieval.similar import SimilarityIndex
from storage.catalog import Catalog
from tests.factories import instance_record, random_nodules
from tests.peers import wait_until

VERSION = "v1"


def _store(catalog: Catalog, rng: np.random.Generator, series: str, count: int) -> None:
    catalog.intake.record_instance(instance_record(series + ".1", series=series), now=1.0)
    catalog.nodules.replace(series, VERSION, random_nodules(rng, count))


def _answers(index: SimilarityIndex, queries: np.ndarray) -> tuple[list[int], list[list[int]]]:
    """The ids held, and the exact top-5 (distances and ids) of each query."""
    distances, found = index.index.search(queries, 5, pool=0)
    return sorted(index.index.ids.tolist()), np.hstack([distances, found]).tolist()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_a_restart_reads_the_snapshot_and_only_the_rows_after_it(
    catalog, rng, tmp_path, monkeypatch
) -> None:
    for i in range(4):
        _store(catalog, rng, f"1.2.{i}", 5)
    first = SimilarityIndex(catalog, VERSION, snapshot_dir=tmp_path / "index")
    first.load()  # every row once, and a snapshot of them
    assert first.index.ntotal == 20
    assert sorted(p.name for p in (tmp_path / "index" / VERSION).iterdir()) == [
        "index.npz",
        "position.json",
    ]
    # After the snapshot: a new series, one processed again, another model's rows.
    _store(catalog, rng, "1.2.9", 3)
    _store(catalog, rng, "1.2.0", 2)
    catalog.intake.record_instance(instance_record("1.3.1", series="1.3"), now=1.0)
    catalog.nodules.replace("1.3", "v0", random_nodules(rng, 4))

    read: list[int] = []
    iter_codes = catalog.nodules.iter_codes

    def counting(*args, **kwargs):
        for batch in iter_codes(*args, **kwargs):
            read.append(len(batch))
            yield batch

    monkeypatch.setattr(catalog.nodules, "iter_codes", counting)
    restarted = SimilarityIndex(catalog, VERSION, snapshot_dir=tmp_path / "index")
    restarted.load()
    assert sum(read) == 5  # the 3 + 2 new rows, not the 20 of the snapshot again
    monkeypatch.undo()
    rebuilt = SimilarityIndex(catalog, VERSION)  # no snapshot: every row
    queries = rng.integers(0, 256, (4, 24), dtype=np.uint8)
    ids, answers = _answers(restarted, queries)
    assert len(ids) == 20 - 5 + 2 + 3
    assert (ids, answers) == _answers(rebuilt, queries)


def test_a_position_older_than_its_snapshot_is_replayed_harmlessly(catalog, rng, tmp_path) -> None:
    for i in range(3):
        _store(catalog, rng, f"1.2.{i}", 4)
    first = SimilarityIndex(catalog, VERSION, snapshot_dir=tmp_path / "index")
    first.load()
    _store(catalog, rng, "1.2.0", 1)  # removes 4, adds 1
    first.sync()
    first.save_snapshot()
    # A crash between the index file and its position file: the position is older.
    (tmp_path / "index" / VERSION / "position.json").write_text(
        json.dumps({"last_nodule_id": -1, "last_removal": 0})
    )
    restarted = SimilarityIndex(catalog, VERSION, snapshot_dir=tmp_path / "index")
    assert sorted(restarted.index.ids.tolist()) == sorted(first.index.ids.tolist())
    assert restarted.index.ntotal == 9


def test_the_index_follows_rows_another_process_stores_and_removes(rng, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    node, worker = Catalog(url), Catalog(url)
    try:
        _store(worker, rng, "1.2.1", 3)
        index = SimilarityIndex(node, VERSION, snapshot_dir=tmp_path / "index")
        index.start(poll_seconds=0.05, snapshot_seconds=3600)
        wait_until(lambda: index.ready and index.index.ntotal == 3, what="loaded")
        _store(worker, rng, "1.2.2", 2)
        _store(worker, rng, "1.2.1", 1)
        wanted = set(worker.nodules.ids_of_series("1.2.1", VERSION)) | set(
            worker.nodules.ids_of_series("1.2.2", VERSION)
        )
        wait_until(lambda: set(index.index.ids.tolist()) == wanted, what="followed")
        index.stop()  # writes a snapshot of what changed since the load
        position = json.loads((tmp_path / "index" / VERSION / "position.json").read_text())
        assert position["last_nodule_id"] == max(wanted) and position["last_removal"] == 3
    finally:
        node.close()
        worker.close()


def test_a_query_waits_for_the_load_in_progress_and_never_runs_it(catalog, rng) -> None:
    _store(catalog, rng, "1.2.1", 3)
    release = threading.Event()
    iter_codes = catalog.nodules.iter_codes

    def slow(*args, **kwargs):
        assert threading.current_thread().name == "index-follower"
        release.wait(30)
        yield from iter_codes(*args, **kwargs)

    catalog.nodules.iter_codes = slow  # type: ignore[method-assign]
    impatient = SimilarityIndex(catalog, VERSION, wait_seconds=0.05)
    impatient.start(poll_seconds=3600, snapshot_seconds=3600)
    patient = SimilarityIndex(catalog, VERSION, wait_seconds=30)
    patient.start(poll_seconds=3600, snapshot_seconds=3600)
    try:
        with pytest.raises(IndexNotReady, match="still loading"):
            impatient.index  # noqa: B018
        threading.Timer(0.2, release.set).start()
        assert patient.index.ntotal == 3  # waited for the follower's load
    finally:
        release.set()
        impatient.stop()
        patient.stop()
