"""One backfill run: list the archive window by window, fetch what the node lacks, checkpoint.

The run is resumable and idempotent, with its state in the catalog
(:class:`storage.catalog.BackfillCatalog`):

1. **List.** The windows are the days from ``since`` to ``until`` (or the
   whole archive). A past day finished by an earlier run is skipped; every
   other window is asked for its studies with CT
   (:func:`dicom_node.backfill.sources.find_all` splits what the archive
   caps). Studies an earlier run finished are dropped.
2. **Fetch.** Study by study, in date order: the instances of its CT
   series are listed, those the node holds are left out (never downloaded
   again), the rest are fetched and handed to the node
   (:mod:`dicom_node.backfill.handoff`); then the catalog is asked again and
   the study is recorded ``done`` when every instance is there (``failed``
   with the reason otherwise; the next run retries it). A day is recorded
   done when all its studies are.
3. **Release.** Index-only series (``--index-only``) that are processed lose
   their instance files; their catalog rows, nodules, codes and thumbnails
   stay, so they remain searchable and are never fetched again.

A stop request (SIGTERM, SIGINT) lets the transfers in flight finish and
be handed over, records what finished, and ends the run; the next run goes
on from there.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dicom_node.backfill.handoff import Handoff
from dicom_node.backfill.pacing import Pacing, Stopped
from dicom_node.backfill.progress import Progress
from dicom_node.backfill.sources import InstanceRef, Source, StudyRef, Window, find_all
from dicom_node.errors import ArchiveError, HandoffError
from storage.catalog import BackfillStudyState, Catalog
from storage.instances import InstanceStore

__all__ = ["Backfill", "BackfillOptions", "DayEstimate", "PlannedStudy", "Summary", "day_windows"]

logger = logging.getLogger(__name__)


def day_windows(
    since: datetime.date | None, until: datetime.date | None, today: datetime.date
) -> list[Window]:
    """One window per StudyDate from ``since`` to ``until`` (default today).

    Without ``since``: one window, the whole archive.
    """
    if since is None:
        if until is not None:
            raise ValueError("--until needs --since (or leave both out for the whole archive)")
        return [Window()]
    until = until or today
    if until < since:
        raise ValueError(f"--until {until} is before --since {since}")
    return [Window.day(since + datetime.timedelta(days=d)) for d in range((until - since).days + 1)]


@dataclass(frozen=True)
class BackfillOptions:
    """What one run does."""

    since: datetime.date | None = None
    until: datetime.date | None = None
    index_only: bool = False
    """Drop the instance files of processed series (codes, measurements, thumbnails stay)."""
    send_results: bool = False
    """Send the results of backfilled series to ``outbox.destinations``."""
    recheck: bool = False
    """List days an earlier run finished again (known instances are still not fetched)."""


@dataclass
class DayEstimate:
    """What a run would fetch for one StudyDate (``--dry-run``)."""

    study_date: str
    studies: int = 0
    ct_instances: int = 0
    to_fetch: int = 0
    megabytes: float | None = 0.0
    """None when the source cannot tell sizes before fetching (DIMSE)."""


@dataclass(frozen=True)
class PlannedStudy:
    """A study to visit, and the window it was found in."""

    study: StudyRef
    window: Window


@dataclass
class Summary:
    """What a run did, with where the time went."""

    studies: int = 0
    """Studies visited in this run."""
    studies_done_before: int = 0
    """Studies an earlier run had finished (not visited)."""
    studies_failed: int = 0
    instances_fetched: int = 0
    instances_known: int = 0
    """CT instances the node held already (not fetched)."""
    bytes_fetched: int = 0
    series_released: int = 0
    incomplete_windows: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: dict[str, float] = field(
        default_factory=lambda: {"list": 0.0, "fetch": 0.0, "handoff": 0.0, "wait": 0.0}
    )
    """Wall seconds listing, fetching (handoff included), waiting for processing;
    ``handoff`` is the summed time inside the hand-over calls (threads overlap)."""


class Backfill:
    """Run a backfill of ``source`` into the node behind ``handoff``.

    Parameters
    ----------
    source : Source
    catalog : Catalog
        The node's catalog (checkpoints, what it holds, series states).
    handoff : Handoff
    store : InstanceStore
        The node's instance store (index-only series lose their files there).
    pacing : Pacing
    options : BackfillOptions
    today : callable
        Today's date (the current day is never recorded done: it may still grow).
    """

    def __init__(
        self,
        source: Source,
        catalog: Catalog,
        handoff: Handoff,
        store: InstanceStore,
        pacing: Pacing,
        options: BackfillOptions,
        *,
        today: Callable[[], datetime.date] = datetime.date.today,
    ) -> None:
        self.source = source
        self.catalog = catalog
        self.handoff = handoff
        self.store = store
        self.pacing = pacing
        self.options = options
        self.today = today
        self.summary = Summary()
        self.series: set[str] = set()
        """Series this run handed over (the caller waits for their processing)."""
        self._handoff_lock = threading.Lock()

    # -- listing -----------------------------------------------------------

    def plan(self) -> list[PlannedStudy]:
        """Every study still to visit, in date order; windows finished before are skipped."""
        started = time.perf_counter()
        planned: list[PlannedStudy] = []
        checkpoints = self.catalog.backfill
        windows = day_windows(self.options.since, self.options.until, self.today())
        self._remaining: dict[Window, int] = {}
        self._found: dict[Window, int] = {}
        for window in windows:
            self.pacing.check()
            if (
                window.full_day
                and not self.options.recheck
                and checkpoints.window_done(self.source.name, window.study_date)
            ):
                continue
            studies, incomplete = find_all(self.source, window)
            self.summary.incomplete_windows += [str(w) for w in incomplete]
            done = checkpoints.done_studies(
                self.source.name, [s.study_instance_uid for s in studies]
            )
            self.summary.studies_done_before += len(done)
            todo = [s for s in studies if s.study_instance_uid not in done]
            self._remaining[window] = len(todo)
            self._found[window] = len(studies)
            planned += [PlannedStudy(s, window) for s in todo]
            if not todo:
                self._finish_window(window, len(studies))
        planned.sort(key=lambda p: (p.study.study_date or "", p.study.study_instance_uid))
        self.summary.seconds["list"] += time.perf_counter() - started
        return planned

    def _finish_window(self, window: Window, studies: int) -> None:
        if window.full_day and window.first is not None and window.first < self.today():
            self.catalog.backfill.finish_window(self.source.name, window.study_date, studies)

    # -- fetching ----------------------------------------------------------

    def _deliver(self, data: bytes, syntax: str, sop_class: str, uid: str) -> None:
        started = time.perf_counter()
        self.handoff.deliver(data, syntax, sop_class, uid)
        elapsed = time.perf_counter() - started
        with self._handoff_lock:
            self.summary.seconds["handoff"] += elapsed

    def visit(self, planned: PlannedStudy) -> BackfillStudyState | None:
        """Fetch one study's missing CT instances; None when stopped before it was whole."""
        study = planned.study
        refs = self.source.instances(study)
        known = self.handoff.known(r.sop_instance_uid for r in refs)
        todo = [r for r in refs if r.sop_instance_uid not in known]
        self.summary.instances_known += len(refs) - len(todo)
        self._record_series(study, refs, known)
        fetched = size = 0
        failures: list[str] = []
        if todo:
            report = self.source.fetch(study, todo, self._deliver)
            fetched, size, failures = report.fetched, report.bytes, list(report.failed)
            series_uids = sorted({r.series_instance_uid for r in todo})
            try:
                self.handoff.finish_study(series_uids)
            except HandoffError as exc:
                failures.append(str(exc))
            self.series.update(series_uids)
        self.summary.instances_fetched += fetched
        self.summary.bytes_fetched += size
        missing = self._missing(todo)
        if missing and self.pacing.stop.is_set() and not failures:
            return None  # stopped mid-study: neither done nor failed; the next run goes on
        state = BackfillStudyState.FAILED if missing else BackfillStudyState.DONE
        detail = None
        if missing:
            detail = f"{len(missing)} of {len(refs)} instances missing" + (
                f": {failures[0]}" if failures else ""
            )
            logger.warning("study %s: %s", study.study_instance_uid, detail)
        self.catalog.backfill.finish_study(
            self.source.name,
            study.study_instance_uid,
            state,
            study_date=study.study_date,
            instances_fetched=fetched,
            bytes_fetched=size,
            detail=detail,
        )
        return state

    def _record_series(self, study: StudyRef, refs: list[InstanceRef], known: set[str]) -> None:
        """Record the series that are new to the node as backfilled (results, index-only)."""
        partly_known = {r.series_instance_uid for r in refs if r.sop_instance_uid in known}
        for series_uid in sorted({r.series_instance_uid for r in refs} - partly_known):
            self.catalog.backfill.record_series(
                series_uid,
                study.study_instance_uid,
                source=self.source.name,
                send_results=self.options.send_results,
                index_only=self.options.index_only,
            )

    def _missing(self, refs: Iterable[InstanceRef]) -> list[str]:
        uids = [r.sop_instance_uid for r in refs]
        held = self.catalog.backfill.known_instances(uids)
        return [uid for uid in uids if uid not in held]

    def estimate(self, planned: list[PlannedStudy]) -> list[DayEstimate]:
        """What a run would fetch, per StudyDate (``--dry-run``); nothing is fetched."""
        days: dict[str, DayEstimate] = {}
        for item in planned:
            self.pacing.check()
            refs = self.source.instances(item.study)
            known = self.handoff.known(r.sop_instance_uid for r in refs)
            todo = [r for r in refs if r.sop_instance_uid not in known]
            date = item.study.study_date or "(no date)"
            day = days.setdefault(date, DayEstimate(date))
            day.studies += 1
            day.ct_instances += len(refs)
            day.to_fetch += len(todo)
            sizes = [r.size for r in todo]
            if day.megabytes is not None and all(size is not None for size in sizes):
                day.megabytes += sum(size or 0 for size in sizes) / 1e6
            else:
                day.megabytes = None
        return [days[date] for date in sorted(days)]

    # -- index-only --------------------------------------------------------

    def release(self) -> int:
        """Drop the instance files of processed index-only series; return how many series."""
        released = 0
        for record in self.catalog.backfill.releasable():
            for relative in self.catalog.workflow.series_instance_paths(record.series_instance_uid):
                self.store.remove(relative)
            self.catalog.backfill.mark_released(record.series_instance_uid)
            logger.info("series %s indexed: pixel data released", record.series_instance_uid)
            released += 1
        self.summary.series_released += released
        return released

    # -- the run -----------------------------------------------------------

    def run(self, *, progress_stream: object = None) -> Summary:
        """List, then fetch study by study until done or stopped."""
        try:
            planned = self.plan()
        except Stopped:
            self.summary.stopped = True
            return self.summary
        progress = Progress(len(planned), stream=progress_stream)  # type: ignore[arg-type]
        started = time.perf_counter()
        try:
            for item in planned:
                try:
                    self.pacing.wait_for_window()
                    state = self.visit(item)
                except Stopped:
                    state = None
                except ArchiveError as exc:
                    logger.error("study %s: %s", item.study.study_instance_uid, exc)
                    state = BackfillStudyState.FAILED
                    self.catalog.backfill.finish_study(
                        self.source.name,
                        item.study.study_instance_uid,
                        state,
                        study_date=item.study.study_date,
                        instances_fetched=0,
                        bytes_fetched=0,
                        detail=str(exc),
                    )
                if state is None:
                    self.summary.stopped = True
                    break
                self.summary.studies += 1
                self.summary.studies_failed += state is BackfillStudyState.FAILED
                progress.study_done(
                    self.summary.instances_fetched - progress.instances,
                    self.summary.bytes_fetched - progress.bytes,
                    paused=self.pacing.paused_seconds,
                )
                if state is BackfillStudyState.DONE:
                    self._count_down(item.window)
                if self.options.index_only:
                    self.release()
        finally:
            progress.close()
            self.summary.seconds["fetch"] += time.perf_counter() - started
        return self.summary

    def _count_down(self, window: Window) -> None:
        self._remaining[window] -= 1
        if self._remaining[window] == 0:
            self._finish_window(window, self._found[window])

    def wait_processed(
        self, unsettled: Callable[[set[str]], set[str]], *, poll: float = 0.5
    ) -> None:
        """Wait until no series of this run is left to process; release index-only ones meanwhile.

        Parameters
        ----------
        unsettled : callable
            Of the given series UIDs, those still receiving, queued or processing.
        """
        started = time.perf_counter()
        waiting = set(self.series)
        logger.info("waiting for %d backfilled series to be processed", len(waiting))
        while waiting and not self.pacing.stop.is_set():
            waiting = unsettled(waiting)
            if self.options.index_only:
                self.release()
            if waiting:
                self.pacing.stop.wait(poll)
        if self.options.index_only:
            self.release()
        self.summary.seconds["wait"] += time.perf_counter() - started
