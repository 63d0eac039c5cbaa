"""Same-patient priors: matched after registering the prior's compact image, with growth.

The follow-up lies 29 mm further along the table (and 6 mm to the side) than
the prior: raw patient coordinates of the same nodule differ by 30 mm, which
once made an unchanged nodule "-45 %". The images are synthetic (a body with
two lungs and a smooth texture at the node's 4 mm registration grid) so the
test needs no data and runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ai.registration import RegistrationImage
from dicom_node.retrieval.priors import same_patient_priors
from tests.factories import instance_record, new_nodule

VERSION = "test-model-1"
SHIFT = np.array([6.0, 0.0, 29.0])  # world x, y, z of the same anatomy: prior minus follow-up


def _image(origin: tuple[float, float, float]) -> bytes:
    """A compact image of one synthetic chest whose voxel [0, 0, 0] lies at ``origin``."""
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[0:60, 0:64, 0:80].astype(np.float32)
    body = ((x - 40) / 36) ** 2 + ((y - 32) / 26) ** 2 <= 1
    lungs = np.zeros(body.shape, bool)
    for cx in (24, 56):
        lungs |= ((x - cx) / 12) ** 2 + ((y - 30) / 16) ** 2 + ((z - 30) / 26) ** 2 <= 1
    texture = ndimage.gaussian_filter(rng.normal(0, 1, body.shape), 2.0)
    image = np.where(body, 140 + 60 * texture, 5)
    image = np.where(lungs, 40 + 30 * texture, image)
    return RegistrationImage(
        image=np.clip(image, 0, 255).astype(np.uint8),
        lungs=lungs,
        spacing=(4.0, 4.0, 4.0),
        origin=origin,
    ).to_bytes()


def _study(catalog, study: str, date: str, nodules, image: bytes | None) -> None:
    catalog.intake.record_instance(
        instance_record(study + ".9.1", study + ".9", study, patient_id="P1", study_date=date)
    )
    rng = np.random.default_rng(0)
    rows = [
        new_nodule(
            i,
            rng.integers(0, 2, 192, dtype=np.uint8),
            rng.normal(0, 1, 16).astype(np.float32),
            diameter_mm=diameter,
            size_class=3,
            center_xyz=tuple(float(v) for v in centre),
        )
        for i, (centre, diameter) in enumerate(nodules)
    ]
    catalog.nodules.replace(study + ".9", VERSION, rows, registration_image=image)


#: World centres of two nodules in the follow-up (inside the lungs of the image).
CENTRES = [np.array([100.0, 120.0, 140.0]), np.array([215.0, 110.0, 100.0])]


@pytest.fixture
def patient(catalog):
    """P1: a prior (2023-01-01) and a follow-up a year later, moved on the table.

    Nodule 0 grew from 8.0 to 8.8 mm; nodule 1 stayed 6.0 mm.
    """
    _study(
        catalog,
        "1.1",
        "20230101",
        [(CENTRES[0] + SHIFT, 8.0), (CENTRES[1] + SHIFT, 6.0)],
        _image(tuple(SHIFT)),
    )
    _study(
        catalog, "1.2", "20240101", [(CENTRES[0], 8.8), (CENTRES[1], 6.0)], _image((0.0, 0.0, 0.0))
    )
    return catalog


def test_a_moved_follow_up_is_matched_after_registration_with_its_growth(patient) -> None:
    current = patient.nodules.of(model_version=VERSION, study_instance_uid="1.2")
    priors = same_patient_priors(patient, VERSION, current)
    grown, same = (priors[n.id] for n in current)
    ((prior_grown,), (prior_same,)) = grown, same
    assert prior_grown.study_instance_uid == "1.1" and prior_grown.registered
    assert prior_grown.nodule.diameter_mm == 8.0 and prior_same.nodule.diameter_mm == 6.0
    # 30 mm apart in raw coordinates; under 2 mm after registration.
    assert prior_grown.center_distance_mm < 2.0 and prior_same.center_distance_mm < 2.0
    assert prior_grown.growth_mm == pytest.approx(0.8) and prior_grown.growth_percent == (
        pytest.approx(10.0)
    )
    assert prior_same.growth_mm == pytest.approx(0.0)
    # Volume change of a sphere 8.0 -> 8.8 mm: 1.1^3 - 1 = 33 %; doubling in 365 days.
    assert prior_grown.volume_change_percent == pytest.approx(33.1, abs=0.1)
    expected = 365 * np.log(2) / np.log(1.1**3)
    assert prior_grown.volume_doubling_days == pytest.approx(expected, rel=1e-3)
    assert prior_same.volume_doubling_days is None  # no change: no doubling time


def test_one_nodule_asked_alone_is_paired_as_in_its_series(patient) -> None:
    current = patient.nodules.of(model_version=VERSION, study_instance_uid="1.2")
    alone = same_patient_priors(patient, VERSION, [current[1]])
    assert list(alone) == [current[1].id]
    assert alone[current[1].id][0].nodule.diameter_mm == 6.0


def test_without_images_the_nodules_are_matched_on_raw_coordinates(catalog) -> None:
    _study(catalog, "1.1", "20230101", [(CENTRES[0] + [0, 0, 5], 8.0)], None)
    _study(catalog, "1.2", "20240101", [(CENTRES[0], 8.8)], _image((0.0, 0.0, 0.0)))
    current = catalog.nodules.of(model_version=VERSION, study_instance_uid="1.2")
    ((prior,),) = same_patient_priors(catalog, VERSION, current).values()
    assert not prior.registered and prior.center_distance_mm == pytest.approx(5.0)
    # The earlier study has no prior of its own: only later studies look back.
    earlier = catalog.nodules.of(model_version=VERSION, study_instance_uid="1.1")
    assert same_patient_priors(catalog, VERSION, earlier) == {}


def test_an_unreadable_image_falls_back_to_raw_coordinates(catalog) -> None:
    _study(catalog, "1.1", "20230101", [(CENTRES[0] + [0, 0, 5], 8.0)], b"not an image")
    _study(catalog, "1.2", "20240101", [(CENTRES[0], 8.8)], _image((0.0, 0.0, 0.0)))
    current = catalog.nodules.of(model_version=VERSION, study_instance_uid="1.2")
    ((prior,),) = same_patient_priors(catalog, VERSION, current).values()
    assert not prior.registered and prior.growth_mm == pytest.approx(0.8)
