"""The job runner: the steps run on a completed series, in order, the catalog as the truth.

A step (:class:`Step`) takes a series from one state to the next: the AI
step (``dicom_node.processing.analysis``) from ``complete`` to ``indexed``,
the results step (``dicom_node.results.step``) from ``indexed`` to
``reported``. A worker claims a due job (:meth:`JobRunner.claim_next`: the
step's ``requires`` state becomes ``processing`` and the job row for
(series, step, version) becomes ``running`` under the worker's lease, in one
transaction), runs the step, then stores the state the step left, finishes
the job and claims the next step for itself, again in one transaction. What
a step produced for the next one (the headers read, the nodules stored)
travels in the :class:`SeriesJob`, so nothing is read twice; a step never
calls another, and only the runner knows their order.

Workers are the node's own threads or ``dicom-node worker`` processes on
other machines (:mod:`dicom_node.processing.queue`); they renew their leases
while they work. A job whose worker died is taken over by another once the
lease has run out, and every write of a job checks that its worker still
holds it, so a series is never processed by two workers at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset

from ai.types import Volume
from storage.catalog import (
    Catalog,
    Claim,
    Finished,
    JobState,
    NoduleRecord,
    SeriesState,
    StepKey,
)
from storage.errors import LeaseLost

__all__ = ["JobRunner", "Outcome", "ReadsAhead", "RecordingStep", "SeriesJob", "Step"]

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
    volume: Volume | None = None
    """The series' HU volume, read by the AI step (ahead of time when it can)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per part of each step (read, lungs, nodules, rois, codes, store, results)."""
    outcome: Outcome | None = None
    """The series' state after the last step that ran, with every step's reason."""
    claim: Claim | None = None
    """The job being run: steps pass it to the catalog writes that must check
    that this worker still holds it."""


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


@runtime_checkable
class ReadsAhead(Protocol):
    """A step that can read its series before it runs (while the worker computes another)."""

    def prepare(self, job: SeriesJob) -> None:
        """Fill ``job`` with what :meth:`Step.run` reads; what is there already is kept."""
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
    """Claim series from the catalog and run the steps on them, in order.

    Parameters
    ----------
    catalog : Catalog
    steps : sequence of Step
        In order; each starts from the state the one before it produces. None
        in a node that only receives and answers: it claims nothing.
    lease_seconds : float
        How long a claim stays this worker's without renewal
        (``worker.lease_seconds``); :meth:`renew_leases` extends it.
    max_attempts : int
        A job claimed this many times without finishing (its workers died on
        it) ends with the step's ``on_error`` state instead of a further try.
    """

    def __init__(
        self,
        catalog: Catalog,
        steps: Sequence[Step],
        *,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        self.catalog = catalog
        self.steps = tuple(steps)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.identity = _identity()
        self._keys = tuple(StepKey(s.name, s.version, s.requires) for s in self.steps)

    def worker(self) -> str:
        """This thread's name as a job holder: ``host:pid:token:thread``."""
        return f"{self.identity}:{threading.current_thread().name}"

    def claim_next(self) -> Claim | None:
        """Claim the next due job of any step (a taken-over one first), or None."""
        if not self._keys:
            return None
        return self.catalog.workflow.claim_next(
            self._keys, worker=self.worker(), lease_seconds=self.lease_seconds
        )

    def run(self, series_instance_uid: str) -> SeriesJob | None:
        """Claim this series for the first step it is due for and run; None if none could."""
        for key in self._keys:
            claim = self.catalog.workflow.claim(
                series_instance_uid, key, worker=self.worker(), lease_seconds=self.lease_seconds
            )
            if claim is not None:
                return self.run_claimed(claim)
        return None

    def run_next(self) -> SeriesJob | None:
        """Claim the next due job and run it (and the steps after it); None if nothing is due."""
        claim = self.claim_next()
        return None if claim is None else self.run_claimed(claim)

    def prepare(self, claim: Claim, job: SeriesJob) -> None:
        """Let the claimed step read its series ahead, if it reads (see :class:`ReadsAhead`)."""
        step = self.steps[self._position(claim)]
        if isinstance(step, ReadsAhead):
            step.prepare(job)

    def release(self, claim: Claim) -> None:
        """Give back a claim that was not run (the worker is stopping)."""
        step = self.steps[self._position(claim)]
        self.catalog.workflow.release(claim, step.requires)

    def renew_leases(self) -> int:
        """Extend the leases of every job this process holds; return how many."""
        return self.catalog.workflow.renew(f"{self.identity}:", self.lease_seconds)

    def _position(self, claim: Claim) -> int:
        for position, key in enumerate(self._keys):
            if (key.name, key.version) == (claim.step, claim.version):
                return position
        raise ValueError(f"no step {claim.step} {claim.version} in this runner")

    def run_claimed(self, claim: Claim, job: SeriesJob | None = None) -> SeriesJob:
        """Run the claimed step on its series, then the steps after it while they follow."""
        uid = claim.series_instance_uid
        job = job or SeriesJob(uid)
        workflow = self.catalog.workflow
        position = self._position(claim)
        reasons = self._earlier_reasons(uid, position)
        current: Claim | None = claim
        while current is not None:
            step = self.steps[position]
            job.claim = current
            started = time.perf_counter()
            job_state = JobState.DONE
            if current.attempts > self.max_attempts:
                outcome = Outcome(
                    step.on_error,
                    f"{step.name} given up: claimed {current.attempts - 1} times by workers "
                    "that stopped before finishing it",
                )
                job_state = JobState.FAILED
            else:
                try:
                    outcome = step.run(job)
                except LeaseLost as exc:
                    logger.warning("%s; its results were not written", exc)
                    return job
                except Exception as exc:  # noqa: BLE001 - any failure becomes the series' reason
                    logger.exception("step %s failed on series %s", step.name, uid)
                    outcome = Outcome(
                        step.on_error, f"{step.name} failed: {exc.__class__.__name__}: {exc}"
                    )
                    job_state = JobState.FAILED
            if outcome.reason:
                reasons.append(outcome.reason)
            job.outcome = Outcome(outcome.state, "; ".join(reasons) or None)
            following = self._keys[position + 1] if position + 1 < len(self.steps) else None
            finished, current = workflow.finish(
                current,
                job_state,
                outcome=outcome.state,
                detail=outcome.reason,
                series_reason=job.outcome.reason,
                then=following if outcome.state is step.produces else None,
                lease_seconds=self.lease_seconds,
            )
            logger.info(
                "series %s: %s -> %s in %.2f s",
                uid,
                step.name,
                outcome.state.value,
                time.perf_counter() - started,
            )
            if finished is Finished.LOST:
                logger.warning(
                    "series %s: the %s job was taken over by another worker while this one "
                    "ran it; its outcome is not recorded",
                    uid,
                    step.name,
                )
            elif finished is Finished.REOPENED:
                logger.info(
                    "series %s changed during %s (late instance); it will run again",
                    uid,
                    step.name,
                )
            position += 1
        job.claim = None
        return job

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

    def _earlier_reasons(self, series_instance_uid: str, position: int) -> list[str]:
        """The reason the step before ``position`` gave, when a run starts past the first step."""
        if position == 0:
            return []
        before = self.steps[position - 1]
        record = self.catalog.workflow.job(series_instance_uid, before.name, before.version)
        return [record.detail] if record is not None and record.detail else []

    def recover(self) -> int:
        """End the leases of jobs held by dead processes of this host; put stray series back.

        A job whose holder was a process of this host that is gone (the node
        restarted after a crash) is taken over at once rather than when its
        lease runs out. A series left ``processing`` without a running job
        (set by hand, or by an older node) goes back to the first step.

        Returns
        -------
        int
            Jobs and series recovered.
        """
        workflow = self.catalog.workflow
        running = workflow.jobs_in_states([JobState.RUNNING])
        dead = sorted({r.worker for r in running if r.worker and _is_dead(r.worker, self.identity)})
        recovered = workflow.expire(dead)
        if not self.steps:
            return recovered
        first = self.steps[0]
        # Series first, then the jobs running now: a claim (series and job in
        # one transaction) made by a live worker in between is seen as held.
        processing = workflow.series_in_states([SeriesState.PROCESSING])
        held = {r.series_instance_uid for r in workflow.jobs_in_states([JobState.RUNNING])}
        for uid in processing:
            if uid not in held and workflow.transition(
                uid, first.requires, from_states=[SeriesState.PROCESSING]
            ):
                workflow.queue_job(uid, first.name, first.version)
                recovered += 1
        if recovered:
            logger.warning(
                "%d series were interrupted while processing on this host; taken up again",
                recovered,
            )
        return recovered


def _identity() -> str:
    """``host:pid:token``: this process as a job holder (the token tells restarts apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _is_dead(worker: str, identity: str) -> bool:
    """True if ``worker`` names a process of this host that no longer runs."""
    host, _, rest = worker.partition(":")
    pid_text, _, token_and_thread = rest.partition(":")
    my_host, my_pid, my_token = identity.split(":")
    if host != my_host or not pid_text.isdigit():
        return False
    if int(pid_text) == int(my_pid):
        # This pid: this process (same token) or an earlier one that had the same pid.
        return not token_and_thread.startswith(my_token + ":")
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
