"""Measurements of real nodules against the readers' masks (LIDC-IDRI crops; skips without them).

The segmentation was tuned on patient folds 0-3; these are fold-4 patients.
"""

from __future__ import annotations

import statistics

import pytest

from ai.evaluation.measurement import measure_crop, summarise_measurements
from ai.readers.lidc_crops import patient_folds, read_nodule_table


@pytest.fixture(scope="module")
def held_out(lidc_nodules_dir):
    nodules = read_nodule_table(lidc_nodules_dir)
    folds = patient_folds(n.patient_id for n in nodules)
    chosen = [n for n in nodules if folds[n.patient_id] == 4][::3]  # every third: about 38 nodules
    return [measure_crop(n) for n in chosen]


def test_real_nodules_are_found_and_measured_within_1_5_mm(held_out) -> None:
    report = summarise_measurements(held_out)
    assert report.overall.found >= 0.9 * report.overall.n
    assert report.overall.median_abs_diameter_error_mm <= 1.5
    assert report.overall.median_abs_long_axis_error_mm <= 3.0
    small = [m for m in held_out if m.found and m.ref_diameter_mm < 8.0]
    assert statistics.median(abs(m.diameter_mm - m.ref_diameter_mm) for m in small) <= 1.5


def test_textures_are_mostly_right(held_out) -> None:
    found = [m for m in held_out if m.found]
    right = sum(m.texture == m.ref_texture for m in found)
    assert right >= 0.6 * len(found)
