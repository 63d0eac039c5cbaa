"""``dicom-node backfill`` against a real Orthanc (deploy/orthanc/ configuration), REST and DIMSE.

The archive: six CT studies of plain slices on three dates (two per day,
hours apart) and an MR study. What must hold: every CT instance, and only
those, ends in the catalog; no instance is downloaded twice across a
SIGTERM and a SIGKILL (downloads counted by a proxy in front of Orthanc's
REST API); REST and DIMSE give the same catalog; an archive capped at one
C-FIND answer still yields every study; a backfill beside a running node
hands everything to it (C-MOVE to its AE, C-STORE from the spool).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.cli import main
from storage.catalog import Catalog
from tests.orthanc import CountingProxy, start_orthanc, write_archive
from tests.peers import free_port, wait_until

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
SINCE, UNTIL = "2024-01-01", "2024-01-05"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    work = tmp_path_factory.mktemp("archive")
    files, ct_uids = write_archive(work / "files")
    node_port = free_port()  # where Orthanc's "dicom-node" modality sends C-MOVEs
    orthanc = start_orthanc(work / "orthanc", lua=False, node_port=node_port)
    orthanc.upload(files)
    orthanc.node_port = node_port  # type: ignore[attr-defined]
    yield orthanc, ct_uids
    orthanc.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    work = tmp_path_factory.mktemp("capped")
    files, ct_uids = write_archive(work / "files")
    orthanc = start_orthanc(work / "orthanc", lua=False, limit_find_results=1)
    orthanc.upload(files)
    yield orthanc, ct_uids
    orthanc.stop()


def _catalog_rows(data_dir: Path) -> set[tuple[str, ...]]:
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite3'}")
    try:
        with catalog.engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT st.study_instance_uid, st.study_date, st.accession_number, "
                "se.series_instance_uid, se.modality, i.sop_instance_uid, i.sop_class_uid, "
                "i.transfer_syntax_uid FROM instances i JOIN series se USING (series_instance_uid) "
                "JOIN studies st ON st.study_instance_uid = se.study_instance_uid"
            ).all()
    finally:
        catalog.close()
    return {tuple(str(v) for v in row) for row in rows}


def _sop_uids(rows: set[tuple[str, ...]]) -> set[str]:
    return {row[5] for row in rows}


def _backfill_process(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DICOM_NODE_SIMILARITY_PORT": "-1", "DICOM_NODE_STORAGE_MIN_FREE_MB": "0"}
    with (data_dir.parent / f"{data_dir.name}-backfill.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "backfill", "--data-dir", str(data_dir), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def test_rest_backfill_resumes_after_sigterm_and_sigkill_without_downloading_twice(
    tmp_path, archive
) -> None:
    orthanc, ct_uids = archive
    proxy = CountingProxy(orthanc.http_port)
    data = tmp_path / "data"
    # One transfer at a time, slowly: the kills land in the middle of the archive.
    args = ("--orthanc", proxy.url(), "--since", SINCE, "--until", UNTIL, "--max-parallel", "1")
    slow = (*args, "--max-mb-per-s", "0.02")
    try:
        first = _backfill_process(data, *slow)
        wait_until(lambda: proxy.total() >= 8, timeout=120, what="8 downloads")
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 3  # stopped; the next run resumes
        after_sigterm = proxy.total()
        assert proxy.twice() == {}

        second = _backfill_process(data, *slow)
        wait_until(lambda: proxy.total() >= after_sigterm + 10, timeout=120, what="10 more")
        second.kill()
        second.wait(30)

        third = _backfill_process(data, *args)
        assert third.wait(180) == 0, (tmp_path / "data-backfill.log").read_text()[-3000:]
    finally:
        proxy.close()
    assert _sop_uids(_catalog_rows(data)) == ct_uids  # every CT instance, no MR
    # SIGTERM: the transfer in flight finished and was kept, nothing fetched twice.
    # SIGKILL: only the one transfer in flight (--max-parallel 1) can have
    # arrived without being stored; it is fetched again, nothing else.
    twice = proxy.twice()
    print(f"\n{proxy.total()} downloads for {len(ct_uids)} instances over 3 runs; twice: {twice}")
    assert sum(count - 1 for count in twice.values()) <= 1, twice
    assert proxy.total() <= len(ct_uids) + 1


def test_rest_and_dimse_give_the_same_catalog_and_a_second_run_fetches_nothing(
    tmp_path, archive, capsys
) -> None:
    orthanc, ct_uids = archive
    proxy = CountingProxy(orthanc.http_port)
    rest, dimse = tmp_path / "rest", tmp_path / "dimse"
    try:
        window = ["--since", SINCE, "--until", UNTIL]
        assert main(["backfill", "--data-dir", str(rest), "--orthanc", proxy.url(), *window]) == 0
        assert main(["backfill", "--data-dir", str(dimse), "--pacs", orthanc.pacs, *window]) == 0
        assert proxy.total() == len(ct_uids)
        # Again: every day is recorded done, nothing is asked or fetched.
        assert main(["backfill", "--data-dir", str(rest), "--orthanc", proxy.url(), *window]) == 0
        out = capsys.readouterr().out
        assert "0 studies visited" in out and proxy.total() == len(ct_uids)
        # --recheck lists the days again; every instance is known: still nothing fetched.
        recheck = ["--recheck", "--dry-run"]
        assert (
            main(["backfill", "--data-dir", str(rest), "--orthanc", proxy.url(), *window, *recheck])
            == 0
        )
        assert "total" in capsys.readouterr().out and proxy.total() == len(ct_uids)
    finally:
        proxy.close()
    rows = _catalog_rows(rest)
    assert _sop_uids(rows) == ct_uids
    assert _catalog_rows(dimse) == rows


def test_a_capped_archive_still_yields_every_study(tmp_path, capped) -> None:
    orthanc, ct_uids = capped
    # The whole archive (no dates): split by date, then by time within a day.
    assert main(["backfill", "--data-dir", str(tmp_path / "d"), "--pacs", orthanc.pacs]) == 0
    assert _sop_uids(_catalog_rows(tmp_path / "d")) == ct_uids
    url = orthanc.url_with_credentials
    assert main(["backfill", "--data-dir", str(tmp_path / "r"), "--orthanc", url]) == 0
    assert _sop_uids(_catalog_rows(tmp_path / "r")) == ct_uids


def test_beside_a_running_node_everything_goes_to_it(
    tmp_path, archive, make_settings, start_node
) -> None:
    orthanc, ct_uids = archive
    settings = make_settings(port=orthanc.node_port, series={"idle_seconds": 3600})
    node = start_node(settings)
    data = ["--data-dir", str(settings.data_dir)]
    # Day one by C-MOVE to the node's own AE (Orthanc knows its address) ...
    move = ["--pacs", orthanc.pacs, "--move-destination", settings.ae_title]
    assert main(["backfill", *data, *move, "--since", SINCE, "--until", "2024-01-02"]) == 0
    # ... the others over REST, stored to the node by C-STORE from the spool.
    rest = ["--orthanc", orthanc.url_with_credentials, "--since", "2024-01-03", "--until", UNTIL]
    assert main(["backfill", *data, *rest]) == 0
    assert _sop_uids(_catalog_rows(settings.data_dir)) == ct_uids
    assert not list((settings.data_dir / "backfill-spool").rglob("*.dcm"))
    # They came over DICOM, as a PACS forward does: Orthanc stored day one
    # (C-MOVE), the backfill (calling as the node's AE title) the others.
    with node.catalog.engine.connect() as connection:
        senders = dict(
            connection.exec_driver_sql(
                "SELECT se.series_instance_uid, se.calling_ae_title FROM series se"
            ).all()
        )
    assert sorted(senders.values()) == ["DICOM_NODE"] * 4 + ["ORTHANC"] * 2
    # The node completes them on its own idle timer, as for any sender.
    assert all(s.state.value == "receiving" for s in node.catalog.workflow.summaries())


@pytest.mark.slow
def test_backfilled_phantoms_are_indexed_kept_home_and_index_only(
    tmp_path, tiny_model_dir, capsys
) -> None:
    """Chest phantoms backfilled with --index-only: processed, searchable, results not sent,
    instance files released, and never fetched again."""
    from ai.phantom import TEST_GEOMETRY, write_cohort

    cohort = tmp_path / "cohort"
    write_cohort(
        cohort, patients=2, seed=9, studies_per_patient=1, geometry=TEST_GEOMETRY, anatomy_scale=0.6
    )
    orthanc = start_orthanc(tmp_path / "orthanc", lua=False)
    proxy = CountingProxy(orthanc.http_port)
    data = tmp_path / "data"
    os.environ.update(
        DICOM_NODE_WORKER_MODEL_DIR=str(tiny_model_dir),
        DICOM_NODE_QUALIFICATION_MIN_LUNG_VOLUME_ML="100",
        # a PACS that would receive results, if any were sent (nothing listens there)
        DICOM_NODE_OUTBOX_DESTINATIONS=f"PACS@127.0.0.1:{free_port()}",
        DICOM_NODE_SIMILARITY_PORT="-1",
        DICOM_NODE_STORAGE_MIN_FREE_MB="0",
    )
    try:
        files = sorted((cohort / "dicom").rglob("*.dcm"))
        orthanc.upload(files)
        args = ["backfill", "--data-dir", str(data), "--orthanc", proxy.url(), "--index-only"]
        assert main(args) == 0
        assert proxy.total() == len(files)
        assert main(args) == 0  # again: nothing fetched
        assert proxy.total() == len(files)
    finally:
        proxy.close()
        orthanc.stop()
    catalog = Catalog(f"sqlite:///{data / 'catalog.sqlite3'}")
    try:
        summaries = catalog.workflow.summaries()
        assert [s.state.value for s in summaries] == ["reported", "reported"], summaries
        assert all("not sent (backfilled)" in (s.reason or "") for s in summaries)
        assert catalog.deliveries.in_states() == []  # results kept home
        versions = catalog.nodules.model_versions()
        nodules = [
            n
            for s in summaries
            for n in catalog.nodules.of(
                model_version=versions[0], series_instance_uid=s.series_instance_uid
            )
        ]
        assert nodules and all(n.thumbnail for n in nodules)
        # Index only: the CT files are gone (the node's own SR and key images stay), and
        # the catalog still knows each instance, so none is fetched again.
        ct_series = {s.series_instance_uid for s in summaries}
        left = [p for p in (data / "instances").rglob("*.dcm") if p.parent.name in ct_series]
        assert left == []
        assert len(list((data / "instances").rglob("*.dcm"))) == 4  # SR + key images, twice
        assert catalog.backfill.released_series([s.series_instance_uid for s in summaries]) == {
            s.series_instance_uid for s in summaries
        }
        assert sum(s.instance_count for s in summaries) == len(files)
    finally:
        catalog.close()
    # Still searchable: the similar cases of one study are the other patient's nodules.
    capsys.readouterr()
    study = summaries[0].study_instance_uid
    assert main(["similar", "--data-dir", str(data), "--study", study, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    matched = {m["study_instance_uid"] for n in report["nodules"] for m in n["matches"]}
    assert matched == {summaries[1].study_instance_uid}
