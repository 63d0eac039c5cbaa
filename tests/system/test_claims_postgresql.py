"""Workers and index followers racing on a real PostgreSQL: SKIP LOCKED claims, ordered ids."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dicom_node.retrieval.similar import SimilarityIndex
from storage.catalog import Catalog, SeriesState, StepKey
from tests.factories import instance_record, random_nodules

pytestmark = pytest.mark.system

STEPS = (StepKey("analysis", "v1", SeriesState.COMPLETE),)


def _series(catalog: Catalog, count: int) -> list[str]:
    uids = [f"1.2.{i}" for i in range(count)]
    for uid in uids:
        catalog.intake.record_instance(instance_record(uid + ".1", series=uid), now=1.0)
        assert catalog.workflow.complete(uid, idle_before=1.0, now=1.0)
    return uids


def test_concurrent_workers_never_claim_one_series_twice(fresh_database) -> None:
    catalogs = [Catalog(fresh_database) for _ in range(4)]
    try:
        uids = _series(catalogs[0], 40)
        claimed: list[list[str]] = [[] for _ in catalogs]
        start = threading.Barrier(len(catalogs))

        def work(i: int) -> None:
            start.wait()
            while (claim := catalogs[i].workflow.claim_next(
                STEPS, worker=f"w{i}", lease_seconds=60
            )) is not None:  # fmt: skip
                claimed[i].append(claim.series_instance_uid)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(catalogs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        everything = [uid for part in claimed for uid in part]
        assert sorted(everything) == sorted(uids)  # each series once, none left
        assert sum(1 for part in claimed if part) >= 2  # they did run side by side
    finally:
        for catalog in catalogs:
            catalog.close()


def test_a_follower_misses_no_row_of_concurrent_writers(fresh_database) -> None:
    """Writers commit in id order (the nodules lock), so "ids after the last seen" is complete."""
    writers = [Catalog(fresh_database) for _ in range(3)]
    reader = Catalog(fresh_database)
    try:
        uids = _series(writers[0], 6)
        index = SimilarityIndex(reader, "v1")
        index.load()
        done = threading.Event()

        def write(i: int) -> None:
            rng = np.random.default_rng(i)
            for round_ in range(8):
                for uid in uids[i::3]:
                    writers[i].nodules.replace(uid, "v1", random_nodules(rng, 1 + round_ % 3))

        def follow() -> None:
            while not done.is_set():
                index.sync()

        threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
        follower = threading.Thread(target=follow)
        follower.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        done.set()
        follower.join(60)
        index.sync()
        stored = {
            n.id
            for uid in uids
            for n in reader.nodules.of(model_version="v1", series_instance_uid=uid)
        }
        assert set(index.index.ids.tolist()) == stored
        assert len(stored) == sum(1 + 7 % 3 for _ in uids)
    finally:
        for catalog in [*writers, reader]:
            catalog.close()
