"""The backfill's logic with a fake archive and a real catalog: windows, checkpoints, pacing."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Sequence

import pytest

from dicom_node.backfill.pacing import OffPeakWindow, Pacing, Stopped
from dicom_node.backfill.run import Backfill, BackfillOptions, day_windows
from dicom_node.backfill.sources import (
    Deliver,
    FetchReport,
    Found,
    InstanceRef,
    StudyRef,
    Window,
    find_all,
)
from dicom_node.cli.backfill import parse_day
from storage.catalog import BackfillStudyState, Catalog, InstanceRecord
from storage.instances import InstanceStore

D = datetime.date


class FakeArchive:
    """Studies with a StudyDate and StudyTime (seconds); answers capped at ``cap`` studies."""

    name = "fake archive"

    def __init__(self, studies: dict[str, tuple[D, int, int]], cap: int | None = None) -> None:
        self.studies = studies  # uid -> (date, second of day, instances)
        self.cap = cap
        self.queries: list[Window] = []
        self.fetched: list[str] = []
        self.fail: set[str] = set()
        self.stop_after: int | None = None
        self.stop: threading.Event | None = None

    def find(self, window: Window) -> Found:
        self.queries.append(window)
        hits = [
            StudyRef(uid, f"{date:%Y%m%d}", uid)
            for uid, (date, second, _) in sorted(self.studies.items())
            if window.whole_archive
            or (
                window.first <= date <= window.last
                and window.start_second <= second <= window.end_second
            )
        ]
        if self.cap is not None and len(hits) > self.cap:
            return Found(tuple(hits[: self.cap]), capped=True)
        return Found(tuple(hits), capped=False)

    def instances(self, study: StudyRef) -> list[InstanceRef]:
        count = self.studies[study.study_instance_uid][2]
        return [
            InstanceRef(
                f"{study.study_instance_uid}.{i}",
                f"{study.study_instance_uid}.9",
                None,
                100,
                f"k{i}",
            )
            for i in range(count)
        ]

    def fetch(
        self, study: StudyRef, instances: Sequence[InstanceRef], deliver: Deliver
    ) -> FetchReport:
        fetched = 0
        failed = []
        for ref in instances:
            if self.stop_after is not None and len(self.fetched) >= self.stop_after:
                assert self.stop is not None
                self.stop.set()
                break
            if ref.sop_instance_uid in self.fail:
                failed.append(ref.sop_instance_uid)
                continue
            self.fetched.append(ref.sop_instance_uid)
            deliver(
                b"x" * 100, "1.2.840.10008.1.2.1", "1.2.840.10008.5.1.4.1.1.2", ref.sop_instance_uid
            )
            fetched += 1
        return FetchReport(fetched, 100 * fetched, tuple(failed))


class CatalogHandoff:
    """Records each delivered instance straight in the catalog (what Ingest would do)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.finished: list[list[str]] = []

    def known(self, uids: Iterable[str]) -> set[str]:
        return self.catalog.backfill.known_instances(uids)

    def deliver(self, data: bytes, syntax: str, sop_class: str, uid: str) -> None:
        study, _, _ = uid.rpartition(".")
        self.catalog.intake.record_instance(
            InstanceRecord(
                study_instance_uid=study,
                series_instance_uid=f"{study}.9",
                sop_instance_uid=uid,
                sop_class_uid=sop_class,
                transfer_syntax_uid=syntax,
                relative_path=f"{uid}.dcm",
                size=len(data),
                sha256="0" * 64,
            )
        )

    def finish_study(self, series: Iterable[str]) -> None:
        self.finished.append(list(series))


TODAY = D(2024, 2, 1)


def _backfill(catalog, archive, tmp_path, options, *, stop=None, today=TODAY):
    pacing = Pacing(stop=stop or threading.Event())
    handoff = CatalogHandoff(catalog)
    store = InstanceStore(tmp_path / "instances", fsync=False)
    return Backfill(archive, catalog, handoff, store, pacing, options, today=lambda: today)


ARCHIVE = {
    "1.1": (D(2024, 1, 2), 8 * 3600, 3),
    "1.2": (D(2024, 1, 2), 14 * 3600, 2),
    "1.3": (D(2024, 1, 3), 9 * 3600, 4),
    "1.4": (D(2024, 1, 4), 10 * 3600, 1),
    "1.5": (D(2024, 1, 4), 10 * 3600 + 30, 2),
    "1.6": (D(2024, 1, 4), 16 * 3600, 2),
}


def test_windows_are_days_or_the_whole_archive() -> None:
    today = D(2024, 3, 3)
    assert day_windows(D(2024, 3, 1), None, today) == [Window.day(D(2024, 3, d)) for d in (1, 2, 3)]
    assert day_windows(None, None, today) == [Window()]
    with pytest.raises(ValueError, match="needs --since"):
        day_windows(None, today, today)
    with pytest.raises(ValueError, match="before"):
        day_windows(today, D(2024, 1, 1), today)
    assert Window.day(D(2024, 1, 2)).study_date == "20240102"
    assert Window(D(2024, 1, 2), D(2024, 1, 5)).study_date == "20240102-20240105"
    half = Window.day(D(2024, 1, 2)).split()
    assert half is not None
    assert [h.study_time for h in half] == ["000000-115959", "120000-235959"]
    assert not half[0].full_day and Window.day(D(2024, 1, 2)).full_day
    assert Window(D(2024, 1, 1), D(2024, 1, 1), 0, 59).split() is None


def test_a_capped_archive_is_split_until_every_study_is_found() -> None:
    archive = FakeArchive(ARCHIVE, cap=1)
    for window in (Window(), Window(D(2024, 1, 1), D(2024, 1, 31)), Window.day(D(2024, 1, 4))):
        found, incomplete = find_all(archive, window)
        expected = {
            u
            for u, (d, _, _) in ARCHIVE.items()
            if window.whole_archive or d == D(2024, 1, 4) or window.last > D(2024, 1, 4)
        }
        assert {s.study_instance_uid for s in found} == expected, window
        assert incomplete == []
    # two studies at the same second: a minute is the smallest split, so that
    # window stays capped and is reported, never silently dropped
    same_time = (D(2024, 1, 4), 10 * 3600, 1)
    close = FakeArchive({"1.4": same_time, "1.5": same_time}, cap=1)
    found, incomplete = find_all(close, Window.day(D(2024, 1, 4)))
    assert len(incomplete) == 1 and "20240104" in str(incomplete[0])
    assert len(found) == 1


def test_a_run_fetches_each_missing_instance_once_and_checkpoints(catalog, tmp_path) -> None:
    archive = FakeArchive(ARCHIVE)
    options = BackfillOptions(since=D(2024, 1, 1), until=D(2024, 1, 5))
    summary = _backfill(catalog, archive, tmp_path, options).run()
    assert summary.studies == 6 and summary.studies_failed == 0
    assert summary.instances_fetched == 14 == len(set(archive.fetched)) == len(archive.fetched)
    counts = catalog.backfill.study_counts("fake archive")
    assert counts == {BackfillStudyState.DONE: 6}
    assert all(catalog.backfill.window_done("fake archive", f"2024010{d}") for d in range(1, 6))

    # Again: every day is done, nothing is even asked for.
    archive.queries.clear()
    again = _backfill(catalog, archive, tmp_path, options).run()
    assert again.studies == 0 and archive.queries == [] and len(archive.fetched) == 14

    # --recheck asks again, finds the studies done, fetches nothing.
    recheck = BackfillOptions(since=D(2024, 1, 1), until=D(2024, 1, 5), recheck=True)
    third = _backfill(catalog, archive, tmp_path, recheck).run()
    assert len(archive.queries) == 5 and third.studies_done_before == 6
    assert len(archive.fetched) == 14


def test_today_is_never_recorded_done(catalog, tmp_path) -> None:
    archive = FakeArchive(ARCHIVE)
    options = BackfillOptions(since=D(2024, 1, 3), until=D(2024, 1, 4))
    _backfill(catalog, archive, tmp_path, options, today=D(2024, 1, 4)).run()
    assert catalog.backfill.window_done("fake archive", "20240103")
    assert not catalog.backfill.window_done("fake archive", "20240104")


def test_a_stopped_run_resumes_without_fetching_again(catalog, tmp_path) -> None:
    archive = FakeArchive(ARCHIVE)
    stop = threading.Event()
    archive.stop, archive.stop_after = stop, 4  # 1.1 has 3 instances: stops inside 1.2
    options = BackfillOptions(since=D(2024, 1, 1), until=D(2024, 1, 5))
    first = _backfill(catalog, archive, tmp_path, options, stop=stop).run()
    assert first.stopped and first.studies == 1
    assert catalog.backfill.study_counts("fake archive") == {BackfillStudyState.DONE: 1}
    archive.stop_after = None
    second = _backfill(catalog, archive, tmp_path, options).run()
    assert not second.stopped and second.studies == 5
    assert len(archive.fetched) == len(set(archive.fetched)) == 14
    assert second.instances_known == 1  # 1.2's first instance, fetched by the first run


def test_a_failed_instance_fails_its_study_and_the_next_run_retries_it(catalog, tmp_path) -> None:
    archive = FakeArchive(ARCHIVE)
    archive.fail = {"1.3.2"}
    options = BackfillOptions(since=D(2024, 1, 1), until=D(2024, 1, 5))
    first = _backfill(catalog, archive, tmp_path, options).run()
    assert first.studies_failed == 1
    assert not catalog.backfill.window_done("fake archive", "20240103")
    assert catalog.backfill.window_done("fake archive", "20240102")
    archive.fail = set()
    second = _backfill(catalog, archive, tmp_path, options).run()
    assert second.studies == 1 and second.instances_fetched == 1 and second.studies_failed == 0
    assert catalog.backfill.window_done("fake archive", "20240103")


def test_backfilled_series_keep_their_results_unless_asked(catalog, tmp_path) -> None:
    archive = FakeArchive({"1.1": ARCHIVE["1.1"]})
    _backfill(
        catalog, archive, tmp_path, BackfillOptions(since=D(2024, 1, 2), until=D(2024, 1, 2))
    ).run()
    assert not catalog.backfill.may_send_results("1.1.9")
    assert catalog.backfill.may_send_results("9.9.9")  # a series a PACS sent
    archive = FakeArchive({"1.2": ARCHIVE["1.2"]})
    options = BackfillOptions(
        since=D(2024, 1, 2), until=D(2024, 1, 2), send_results=True, recheck=True
    )
    _backfill(catalog, archive, tmp_path, options).run()
    assert catalog.backfill.may_send_results("1.2.9")


def test_off_peak_window_crossing_midnight() -> None:
    window = OffPeakWindow.parse("22:00-06:00")
    at = lambda h, m=0: datetime.datetime(2024, 1, 1, h, m)  # noqa: E731
    assert window.is_open(at(23)) and window.is_open(at(5, 59)) and not window.is_open(at(6))
    assert window.seconds_until_open(at(21)) == 3600
    assert window.seconds_until_open(at(6)) == 16 * 3600
    day = OffPeakWindow.parse("09:00-17:00")
    assert (
        day.is_open(at(9))
        and not day.is_open(at(17))
        and day.seconds_until_open(at(18)) == 15 * 3600
    )
    for bad in ("22:00", "25:00-06:00", "06:00-06:00"):
        with pytest.raises(ValueError):
            OffPeakWindow.parse(bad)


def test_pacing_pauses_outside_the_window_and_stops_at_once() -> None:
    clock = [datetime.datetime(2024, 1, 1, 21, 59, 30)]
    stop = threading.Event()

    class Ticking(threading.Event):
        def wait(self, timeout=None):  # the clock moves by what was waited
            clock[0] += datetime.timedelta(seconds=timeout or 0)
            return stop.is_set()

    pacing = Pacing(window=OffPeakWindow.parse("22:00-06:00"), stop=Ticking(), now=lambda: clock[0])
    pacing.wait_for_window()
    assert clock[0] >= datetime.datetime(2024, 1, 1, 22, 0)
    clock[0] = datetime.datetime(2024, 1, 2, 7, 0)
    stop.set()
    with pytest.raises(Stopped):
        pacing.wait_for_window()


def test_rate_limit_spreads_bytes_over_time() -> None:
    now = [0.0]
    waited = []

    class Recording(threading.Event):
        def wait(self, timeout=None):
            waited.append(timeout)
            now[0] += timeout or 0
            return False

    pacing = Pacing(max_bytes_per_second=1e6, stop=Recording(), monotonic=lambda: now[0])
    for _ in range(5):
        pacing.spend(500_000)
    assert now[0] == pytest.approx(2.5)  # 2.5 MB at 1 MB/s


def test_parse_day() -> None:
    today = D(2024, 3, 1)
    assert parse_day("2024-01-31", today=today) == D(2024, 1, 31)
    assert parse_day("20240131", today=today) == D(2024, 1, 31)
    assert parse_day("yesterday", today=today) == D(2024, 2, 29)
    assert parse_day("-7", today=today) == D(2024, 2, 23)
    with pytest.raises(Exception, match="not a date"):
        parse_day("31/01/2024", today=today)


def test_the_backfill_writes_no_instance_or_nodule_itself() -> None:
    """Instances reach the node through Ingest.receive or its C-STORE SCP (DESIGN.md rule)."""
    import ast
    from pathlib import Path

    import dicom_node.backfill

    offences = []
    for path in sorted(Path(dicom_node.backfill.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("record_instance", "nodules"):
                offences.append(f"{path.name}:{node.lineno} {node.attr}")
    assert offences == []


def test_progress_counts_studies_per_hour_and_time_left(caplog) -> None:
    import io
    import logging

    from dicom_node.backfill.progress import Progress

    progress = Progress(4, stream=io.StringIO(), log_seconds=0.0)  # not a terminal: log lines
    progress.started -= 3600.0  # an hour ago
    with caplog.at_level(logging.INFO, logger="dicom_node.backfill.progress"):
        progress.study_done(10, 5_000_000)
        progress.study_done(10, 5_000_000)
    assert progress.studies_per_hour == pytest.approx(2.0, rel=0.01)
    assert progress.eta_seconds == pytest.approx(3600.0, rel=0.01)
    assert "2/4 studies, 2 studies/h, 20 instances, 10 MB, about 1.0 h left" in caplog.text
