"""The job runner: the steps run on a completed series, in order, the catalog as the truth.

A step (:class:`Step`) takes a series from one state to the next: the AI
step (``dicom_node.processing.analysis``) from ``complete`` to ``indexed``,
the results step (``dicom_node.results.step``) from ``indexed`` to
``reported``. For each step, :meth:`JobRunner.run` claims the series (the
step's ``requires`` state becomes ``processing`` and a job row for
(series, step, version) becomes ``running``, in one transaction), runs the
step, then stores the state the step left and finishes the job, again in one
transaction. What a step produced for the next one (the headers read, the
nodules stored) travels in the :class:`SeriesJob`, so nothing is read twice;
a step never calls another, and only the runner knows their order.

A series whose claim fails (another worker has it, a late instance reopened
it) is left alone. :meth:`JobRunner.recover` puts the series of jobs that
were running when the node stopped back to where their step starts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset

from storage.catalog import Catalog, JobState, NoduleRecord, SeriesState

__all__ = ["JobRunner", "Outcome", "RecordingStep", "SeriesJob", "Step"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """The state a step leaves its series in, and why."""

    state: SeriesState
    reason: str | None = None


@dataclass
class SeriesJob:
    """One run of the steps on a series: what each step hands to the next."""

    series_instance_uid: str
    headers: list[Dataset] | None = None
    """The series' instances without pixel data, in InstanceNumber order (read once)."""
    nodules: list[NoduleRecord] | None = None
    """The nodules the AI step stored, with their ids."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per part of each step (read, lungs, nodules, rois, codes, store, results)."""
    outcome: Outcome | None = None
    """The series' state after the last step that ran, with every step's reason."""


class Step(Protocol):
    """One step of the work on a series."""

    name: str
    """Job name in the catalog (``analysis``, ``results``)."""
    requires: SeriesState
    """The series state this step starts from."""
    produces: SeriesState
    """The state it leaves on success; the next step starts from it."""
    on_error: SeriesState
    """The state it leaves when it raises."""

    @property
    def version(self) -> str:
        """What makes a new run necessary (the hashing model's version)."""
        ...

    def run(self, job: SeriesJob) -> Outcome:
        """Run on ``job.series_instance_uid``; may read and extend ``job``."""
        ...


class RecordingStep:
    """Records that it ran and computes nothing: the node without a hashing model.

    The series stays ``complete``; the job row shows the run. Tests of the
    DICOM edge run the node with it.
    """

    name = "record"
    version = "record-only-1"
    requires = SeriesState.COMPLETE
    produces = SeriesState.COMPLETE
    on_error = SeriesState.FAILED

    def run(self, job: SeriesJob) -> Outcome:
        """Return ``complete`` with a reason saying nothing was computed."""
        return Outcome(SeriesState.COMPLETE, "recorded; no hashing model to run")


class JobRunner:
    """Run steps on series, one series at a time per call.

    Parameters
    ----------
    catalog : Catalog
    steps : sequence of Step
        In order; each starts from the state the one before it produces.
    lease_seconds : float
        How long a claimed job stays reserved to this worker (recorded for a
        future multi-process worker; the embedded runner recovers at start).
    """

    def __init__(
        self, catalog: Catalog, steps: Sequence[Step], *, lease_seconds: float = 3600.0
    ) -> None:
        if not steps:
            raise ValueError("the job runner needs at least one step")
        self.catalog = catalog
        self.steps = tuple(steps)
        self.lease_seconds = lease_seconds
        self._host = f"{socket.gethostname()}:{os.getpid()}"

    def _worker(self) -> str:
        return f"{self._host}:{threading.current_thread().name}"

    def run(self, series_instance_uid: str) -> SeriesJob | None:
        """Run every step that can claim the series, in order; None if none could."""
        job = SeriesJob(series_instance_uid)
        reasons: list[str] = []
        workflow = self.catalog.workflow
        for position, step in enumerate(self.steps):
            if not workflow.claim(
                series_instance_uid,
                step.name,
                step.version,
                from_state=step.requires,
                worker=self._worker(),
                lease_seconds=self.lease_seconds,
            ):
                continue
            started = time.perf_counter()
            try:
                outcome = step.run(job)
                job_state = JobState.DONE
            except Exception as exc:  # noqa: BLE001 - any failure becomes the series' reason
                logger.exception("step %s failed on series %s", step.name, series_instance_uid)
                outcome = Outcome(
                    step.on_error, f"{step.name} failed: {exc.__class__.__name__}: {exc}"
                )
                job_state = JobState.FAILED
            if outcome.reason:
                reasons.append(outcome.reason)
            job.outcome = Outcome(outcome.state, "; ".join(reasons) or None)
            moved = workflow.finish(
                series_instance_uid,
                step.name,
                step.version,
                job_state,
                outcome=outcome.state,
                detail=outcome.reason,
                series_reason=job.outcome.reason,
            )
            logger.info(
                "series %s: %s -> %s in %.2f s",
                series_instance_uid,
                step.name,
                outcome.state.value,
                time.perf_counter() - started,
            )
            if not moved:
                logger.info(
                    "series %s changed during %s (late instance); it will run again",
                    series_instance_uid,
                    step.name,
                )
                break
            if outcome.state is not step.produces:
                break
            following = self.steps[position + 1 :]
            if following and following[0].requires is step.produces:
                workflow.queue_job(series_instance_uid, following[0].name, following[0].version)
        return job if job.outcome is not None else None

    def pending(self) -> list[str]:
        """Series with a step due: in the step's ``requires`` state and not run since
        their last instance arrived (:meth:`WorkflowCatalog.due_for_step`)."""
        due: list[str] = []
        workflow = self.catalog.workflow
        for step in self.steps:
            for uid in workflow.due_for_step(step.requires, step.name, step.version):
                if uid not in due:
                    due.append(uid)
        return due

    def recover(self) -> int:
        """Put series whose step was interrupted back where that step starts; return how many."""
        workflow = self.catalog.workflow
        by_name = {step.name: step for step in self.steps}
        recovered = 0
        for record in workflow.jobs_in_states([JobState.RUNNING]):
            step = by_name.get(record.step)
            back = step.requires if step is not None else SeriesState.COMPLETE
            recovered += workflow.transition(
                record.series_instance_uid, back, from_states=[SeriesState.PROCESSING]
            )
            workflow.queue_job(record.series_instance_uid, record.step, record.version)
        # Processing without a running job: set by hand, or left by an older node.
        for uid in workflow.series_in_states([SeriesState.PROCESSING]):
            recovered += workflow.transition(
                uid, self.steps[0].requires, from_states=[SeriesState.PROCESSING]
            )
        if recovered:
            logger.warning("%d series were interrupted while processing; queued again", recovered)
        return recovered
