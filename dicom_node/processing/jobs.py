"""Running the processor on a completed series, with the catalog as the truth.

A processor has a ``version`` and ``process(series_instance_uid) ->
Outcome``. :func:`run_series` claims the series (``complete → processing``),
records a job row per (series, processor version), runs the processor and
stores the final state. A series whose claim fails (another worker has it, or
a late instance reopened it) is left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from storage.catalog import Catalog, SeriesState

__all__ = ["Outcome", "Processor", "RecordingProcessor", "run_series"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """The end state of a processed series and why."""

    state: SeriesState
    reason: str | None = None


class Processor(Protocol):
    """Turns a completed series into catalog results."""

    version: str

    def process(self, series_instance_uid: str) -> Outcome:
        """Process one series and return its end state."""
        ...


class RecordingProcessor:
    """Stand-in until the AI pipeline is wired in: records that it ran.

    The series stays ``complete``; the job row shows the run.
    """

    version = "record-only-1"

    def process(self, series_instance_uid: str) -> Outcome:
        """Return ``complete`` with a reason saying nothing was computed."""
        return Outcome(SeriesState.COMPLETE, "recorded; no AI pipeline configured")


def run_series(catalog: Catalog, processor: Processor, series_instance_uid: str) -> Outcome | None:
    """Claim, process and finish one series; None if it could not be claimed."""
    if not catalog.transition(
        series_instance_uid, SeriesState.PROCESSING, from_states=[SeriesState.COMPLETE]
    ):
        return None
    catalog.start_job(series_instance_uid, processor.version)
    started = time.perf_counter()
    try:
        outcome = processor.process(series_instance_uid)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the series' reason
        logger.exception("processor %s failed on series %s", processor.version, series_instance_uid)
        outcome = Outcome(SeriesState.FAILED, f"{exc.__class__.__name__}: {exc}")
    catalog.finish_job(series_instance_uid, processor.version, outcome.state, outcome.reason)
    if not catalog.transition(
        series_instance_uid,
        outcome.state,
        from_states=[SeriesState.PROCESSING],
        reason=outcome.reason,
    ):
        logger.info(
            "series %s changed while processing (late instance); it will run again",
            series_instance_uid,
        )
    logger.info(
        "series %s -> %s in %.2f s",
        series_instance_uid,
        outcome.state.value,
        time.perf_counter() - started,
    )
    return outcome
