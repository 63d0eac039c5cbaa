"""Registering a follow-up to its prior from the compact per-series images, and growth.

The phantom patient (seed 4242, never used in development) has a follow-up
shifted by about 15 mm and turned by a few degrees on the table; truth is in
each study's own world coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ai.followup import match_nodules
from ai.lungs import segment_lungs
from ai.measure import NoduleCandidate
from ai.nodules import find_nodules
from ai.phantom import PhantomStudy, ScanGeometry, plan_patient, render_study
from ai.phantom.render import study_rotation_deg
from ai.registration import Registration, RegistrationImage, register, registration_image

#: The node's processing grid (1 mm), rendered directly.
GEOMETRY = ScanGeometry(matrix=352, pixel_mm=1.0, slice_mm=1.0)


@dataclass(frozen=True)
class Scan:
    study: PhantomStudy
    candidates: list[NoduleCandidate]
    compact: bytes


@pytest.fixture(scope="module")
def scans() -> tuple[Scan, Scan]:
    plan = plan_patient(4242, 1, n_studies=2)
    assert any(study_rotation_deg(plan, 1))
    result = []
    for index in (0, 1):
        study = render_study(plan, index, GEOMETRY, motion=True)
        lungs = segment_lungs(study.volume)
        compact = registration_image(study.volume, lungs).to_bytes()
        result.append(Scan(study, find_nodules(study.volume, lungs), compact))
    return result[0], result[1]


@pytest.fixture(scope="module")
def registration(scans: tuple[Scan, Scan]) -> Registration:
    prior, current = scans
    return register(
        RegistrationImage.from_bytes(current.compact), RegistrationImage.from_bytes(prior.compact)
    )


def test_compact_image_is_small_and_round_trips(scans: tuple[Scan, Scan]) -> None:
    for scan in scans:
        assert len(scan.compact) < 300_000
        image = RegistrationImage.from_bytes(scan.compact)
        assert image.spacing == (4.0, 4.0, 4.0)
        assert image.lungs.mean() > 0.2
        assert RegistrationImage.from_bytes(image.to_bytes()).to_bytes() == scan.compact
    with pytest.raises(ValueError):
        RegistrationImage.from_bytes(b"DNREG1" + scans[0].compact[6:-10])


def test_registration_brings_prior_nodules_onto_the_follow_up(
    scans: tuple[Scan, Scan], registration: Registration
) -> None:
    prior, current = ({n.track_id: n for n in s.study.nodules} for s in scans)
    common = sorted(set(prior) & set(current))
    assert len(common) >= 3
    for track in common:
        raw = np.linalg.norm(np.subtract(prior[track].center_xyz, current[track].center_xyz))
        mapped = registration.map_prior_to_current(prior[track].center_xyz)
        error = np.linalg.norm(mapped - np.asarray(current[track].center_xyz))
        assert raw > 8.0  # the table moved
        assert error < 1.5, (track, error)


def _detected(candidates: list[NoduleCandidate], centre, diameter) -> int | None:
    hits = [
        i
        for i, c in enumerate(candidates)
        if np.linalg.norm(np.subtract(c.center_xyz, centre)) <= diameter / 2.0
    ]
    return max(hits, key=lambda i: candidates[i].confidence, default=None)


def test_growth_of_every_followed_nodule_is_within_1_mm_and_10_percent(
    scans: tuple[Scan, Scan], registration: Registration
) -> None:
    prior, current = scans
    changes = match_nodules(current.candidates, prior.candidates, registration)
    by_current = {c.current_index: c for c in changes if c.status == "matched"}
    before = {n.track_id: n for n in prior.study.nodules}
    checked = 0
    for truth in current.study.nodules:
        if truth.track_id not in before:
            continue
        old = before[truth.track_id]
        i = _detected(current.candidates, truth.center_xyz, truth.diameter_mm)
        j = _detected(prior.candidates, old.center_xyz, old.diameter_mm)
        if i is None or j is None:
            continue
        change = by_current.get(i)
        assert change is not None and change.prior_index == j, truth.track_id
        true_mm = truth.diameter_mm - old.diameter_mm
        true_pct = 100.0 * (truth.diameter_mm / old.diameter_mm - 1.0)
        assert abs(change.diameter_change_mm - true_mm) <= 1.0, (truth.track_id, change, true_mm)
        assert abs(change.diameter_change_pct - true_pct) <= 10.0, (
            truth.track_id,
            change,
            true_pct,
        )
        checked += 1
    assert checked >= 3
