"""The AI step applies the node's operating point and stores what the follow-up needs.

``ai.pipeline.analyse_volume`` is replaced by a stand-in that records how it
was called and answers one nodule: the step's own wiring is under test (the
settings reaching the detector, the FPR probability and the registration
image reaching the catalog), not the AI, which tests/unit/ai covers.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ai.hashing.codes import HashCodes
from ai.measure import NoduleCandidate
from ai.pipeline import SeriesAnalysis
from ai.registration import RegistrationImage
from ai.types import Volume
from dicom_node.processing import analysis
from dicom_node.processing.analysis import AnalysisStep
from dicom_node.processing.jobs import SeriesJob
from dicom_node.settings import QualificationSettings, WorkerSettings
from storage.catalog import SeriesState
from tests.factories import ct_slice, instance_record

SERIES = "1.2.3.4"
COMPACT = RegistrationImage(
    image=np.zeros((4, 4, 4), np.uint8),
    lungs=np.ones((4, 4, 4), bool),
    spacing=(4.0, 4.0, 4.0),
    origin=(0.0, 0.0, 0.0),
)


def _analysis(**kwargs: Any) -> SeriesAnalysis:
    nodule = NoduleCandidate(
        center_zyx=(10.0, 10.0, 10.0),
        center_xyz=(10.0, 10.0, 10.0),
        diameter_mm=7.5,
        long_axis_mm=9.0,
        volume_mm3=221.0,
        mean_hu=-20.0,
        peak_hu=60.0,
        texture="solid",
        bbox=((6, 14), (6, 14), (6, 14)),
        confidence=0.21,  # the blob detector's score: not what is reported
        laterality="right",
        elongation=1.2,
        probability=0.86,
    )
    codes = HashCodes(
        *(np.zeros((1, 8), np.uint8) for _ in range(3)),
        embedding=np.ones((1, 16), np.float32) / 4,
        size_probs=np.full((1, 8), 1 / 8, np.float32),
        texture_probs=np.full((1, 3), 1 / 3, np.float32),
        n_bits=64,
    )
    return SeriesAnalysis(
        lung_mask=SimpleNamespace(volume_ml=lambda: 4000.0),  # type: ignore[arg-type]
        nodules=(nodule,),
        rois=np.zeros((1, 1, 8, 8, 8), np.float32),
        codes=codes,
        thumbnails=np.zeros((1, 8, 8), np.uint8),
        registration=COMPACT,
    )


def test_settings_reach_the_detector_and_the_catalog_gets_probability_and_image(
    catalog, monkeypatch
) -> None:
    catalog.intake.record_instance(instance_record(SERIES + ".1", SERIES, "1.2.3"))
    calls: list[dict[str, Any]] = []

    def fake_analyse(volume: Volume, net: Any, **kwargs: Any) -> SeriesAnalysis:
        calls.append(kwargs)
        return _analysis()

    monkeypatch.setattr(analysis, "analyse_volume", fake_analyse)
    fpr = SimpleNamespace(version="fpr-test")
    step = AnalysisStep(
        QualificationSettings(min_slices=1),
        WorkerSettings(device="cpu", min_nodule_probability=0.7, min_nodule_diameter_mm=6.0),
        store=None,  # type: ignore[arg-type]  # the job holds headers and volume: nothing is read
        catalog=catalog,
        model=SimpleNamespace(net=torch.nn.Linear(1, 1), version="hn-test"),  # type: ignore[arg-type]
        index=SimpleNamespace(sync=lambda: None),  # type: ignore[arg-type]
        fpr=fpr,  # type: ignore[arg-type]
    )
    job = SeriesJob(
        SERIES,
        headers=[ct_slice(0, study_instance_uid="1.2.3", series_instance_uid=SERIES)],
        volume=Volume(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    )
    outcome = step.run(job)
    assert outcome.state is SeriesState.INDEXED, outcome.reason
    (call,) = calls
    assert call["min_probability"] == 0.7 and call["min_diameter_mm"] == 6.0
    assert call["fpr"] is fpr
    (stored,) = catalog.nodules.of(model_version="hn-test", series_instance_uid=SERIES)
    assert stored.confidence == 0.86  # the FPR network's probability, not the blob score
    assert (stored.diameter_mm, stored.long_axis_mm, stored.volume_mm3) == (7.5, 9.0, 221.0)
    assert catalog.nodules.registration_image(SERIES) == COMPACT.to_bytes()
