"""The processor that turns a completed CT series into indexed nodules.

``AIProcessor.process`` reads the series from the instance store, applies the
``[qualification]`` rules, runs :func:`ai.pipeline.analyse_volume` (on the GPU
when there is one), stores every nodule with its codes in the catalog (one
transaction, idempotent per series and model version) and swaps them into
the in-memory index. Anything that cannot be a lung CT volume ends ``skipped``
with the reason; an unexpected error ends ``failed`` (``run_series``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from pydicom import dcmread

from ai.classes import size_class
from ai.errors import AIError
from ai.hashing.codes import TEXTURES
from ai.pipeline import analyse_volume
from ai.volume import load_series
from dicom_node.model import LoadedModel
from dicom_node.processing import Outcome
from dicom_node.qualification import disqualification
from dicom_node.reporting import Reporter
from dicom_node.settings import Settings
from dicom_node.similarity import SimilarityIndex
from storage.catalog import Catalog, SeriesState
from storage.instances import InstanceStore

__all__ = ["AIProcessor", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; other names unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class AIProcessor:
    """Completed series → nodules, codes, index.

    Parameters
    ----------
    settings : Settings
    store : InstanceStore
    catalog : Catalog
    model : LoadedModel
    index : SimilarityIndex
        Index of ``model.version``; new nodules are added to it.
    reporter : Reporter, optional
        Builds, keeps and sends the SR and key images after indexing; the
        series then ends ``reported`` (``indexed`` without a reporter, or if
        the report fails: the nodules are searchable either way).
    """

    def __init__(
        self,
        settings: Settings,
        store: InstanceStore,
        catalog: Catalog,
        model: LoadedModel,
        index: SimilarityIndex,
        *,
        reporter: Reporter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.model = model
        self.index = index
        self.reporter = reporter
        self.version = model.version
        self.device = resolve_device(settings.worker.device)
        self.model.net.to(self.device)
        self.last_timings: dict[str, float] = {}
        """Seconds per step of the last processed series (read, lungs, nodules, rois, codes, store)."""

    def process(self, series_instance_uid: str) -> Outcome:
        """Process one completed series (see the module docstring)."""
        rules = self.settings.qualification
        paths = [
            self.store.path_of(p) for p in self.catalog.series_instance_paths(series_instance_uid)
        ]
        started = time.perf_counter()
        headers = [dcmread(p, stop_before_pixels=True) for p in paths]
        reason = disqualification(headers, rules)
        if reason is not None:
            return Outcome(SeriesState.SKIPPED, reason)
        try:
            volume = load_series(paths)
            self.last_timings = {"read": time.perf_counter() - started}
            analysis = analyse_volume(
                volume,
                self.model.net,
                device=self.device,
                model_version=self.version,
                min_probability=self.settings.worker.min_nodule_probability,
                min_diameter_mm=self.settings.worker.min_nodule_diameter_mm,
            )
        except AIError as exc:
            return Outcome(SeriesState.SKIPPED, f"{exc.__class__.__name__}: {exc}")
        self.last_timings |= analysis.seconds
        if analysis.lung_volume_ml < rules.min_lung_volume_ml:
            return Outcome(
                SeriesState.SKIPPED,
                f"lungs {analysis.lung_volume_ml:.0f} ml, under {rules.min_lung_volume_ml:.0f} ml",
            )
        stored = time.perf_counter()
        old_ids = self.catalog.nodule_ids_of_series(series_instance_uid, self.version)
        new_ids = self.catalog.replace_nodules(
            series_instance_uid, self.version, self._rows(analysis)
        )
        self.index.replace_series(old_ids, new_ids)
        self.last_timings["store"] = time.perf_counter() - stored
        elapsed = time.perf_counter() - started
        if self.reporter is not None:
            reported = time.perf_counter()
            try:
                outcome = self.reporter.report(series_instance_uid)
            except Exception as exc:  # noqa: BLE001 - indexed nodules stay searchable
                logger.exception("report of series %s failed", series_instance_uid)
                return Outcome(SeriesState.INDEXED, f"{len(new_ids)} nodules; report failed: {exc}")
            self.last_timings["report"] = time.perf_counter() - reported
            return Outcome(outcome.state, f"{outcome.reason}; {elapsed:.1f} s on {self.device}")
        return Outcome(
            SeriesState.INDEXED,
            f"{len(new_ids)} nodules, lungs {analysis.lung_volume_ml:.0f} ml, {elapsed:.1f} s on {self.device}",
        )

    @staticmethod
    def _rows(analysis: Any) -> list[dict[str, Any]]:
        codes = analysis.codes
        rows = []
        for i, nodule in enumerate(analysis.nodules):
            rows.append(
                {
                    "nodule_index": i,
                    "center_x": float(nodule.center_xyz[0]),
                    "center_y": float(nodule.center_xyz[1]),
                    "center_z": float(nodule.center_xyz[2]),
                    "diameter_mm": float(nodule.diameter_mm),
                    "long_axis_mm": float(nodule.long_axis_mm),
                    "volume_mm3": float(nodule.volume_mm3),
                    "mean_hu": float(nodule.mean_hu),
                    "peak_hu": float(nodule.peak_hu),
                    "texture": str(nodule.texture),
                    "laterality": str(nodule.laterality),
                    # the false-positive reduction network's probability of a nodule
                    "confidence": float(
                        nodule.probability if nodule.probability is not None else nodule.confidence
                    ),
                    "size_class": size_class(float(nodule.diameter_mm)),
                    "predicted_size_class": int(codes.size_class[i]),
                    "predicted_texture": TEXTURES[int(codes.texture[i])],
                    "shallow": codes.shallow[i].tobytes(),
                    "middle": codes.middle[i].tobytes(),
                    "deep": codes.deep[i].tobytes(),
                    "embedding": codes.embedding[i].astype("float32").tobytes(),
                    "thumbnail": analysis.thumbnails[i].tobytes(),
                }
            )
        return rows
