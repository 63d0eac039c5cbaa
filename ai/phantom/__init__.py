"""Synthetic chest CT with labelled nodules (tests, demo, training, benchmarks).

- :mod:`ai.phantom.anatomy`: analytic anatomy and vessel trees of a patient.
- :mod:`ai.phantom.nodules`: :class:`NoduleTruth`, lesion planning and placement.
- :mod:`ai.phantom.grid`: drawing the anatomy, nodules and scanner on any axial grid.
- :mod:`ai.phantom.render`: one study into a scanner grid (:func:`synthesize_study`).
- :mod:`ai.phantom.dicom`: DICOM CT series of a study.
- :mod:`ai.phantom.cohort`: :func:`write_cohort` (DICOM, annotations.csv, truth.json, masks).
- :mod:`ai.phantom.patches`: patch mode, :func:`ai.phantom.patches.make_patches`.
- :mod:`ai.phantom.preview`: the PNG montage of a written cohort.

Two independent families (``family="a"`` or ``"b"`` wherever a cohort, a
study or patches are made; ``dicom-node synth --family``): family A is the
analytic generator above; family B (:mod:`ai.phantom.family_b`,
:mod:`ai.phantom.grid_b`, :mod:`ai.phantom.lidc_shapes`) has its own vessel
trees, real LIDC-IDRI nodule shapes and another scanner (noise spectrum,
kernel, slice profile), so a model trained on one can be tested on the other.

Lung mask labels: 0 outside the lungs, 1 the patient's right lung (negative
LPS ``x``), 2 the patient's left lung. Size classes come from
:func:`ai.classes.size_class`.
"""

from __future__ import annotations

from ai.classes import size_class
from ai.phantom.anatomy import LEFT_LUNG, RIGHT_LUNG
from ai.phantom.cohort import CohortSummary, write_cohort
from ai.phantom.dicom import TRANSFER_SYNTAXES, identity_for, series_volume, study_datasets
from ai.phantom.nodules import LOCATIONS, SHAPES, TEXTURES, NoduleTruth
from ai.phantom.render import (
    DEFAULT_GEOMETRY,
    FAMILIES,
    TEST_GEOMETRY,
    PatientPlan,
    PhantomStudy,
    ScanGeometry,
    first_studies,
    plan_patient,
    render_study,
    synthesize_study,
)

__all__ = [
    "CohortSummary",
    "DEFAULT_GEOMETRY",
    "FAMILIES",
    "TRANSFER_SYNTAXES",
    "identity_for",
    "series_volume",
    "study_datasets",
    "write_cohort",
    "LEFT_LUNG",
    "LOCATIONS",
    "RIGHT_LUNG",
    "SHAPES",
    "TEST_GEOMETRY",
    "TEXTURES",
    "NoduleTruth",
    "PatientPlan",
    "PhantomStudy",
    "ScanGeometry",
    "plan_patient",
    "render_study",
    "size_class",
    "synthesize_study",
    "first_studies",
]
