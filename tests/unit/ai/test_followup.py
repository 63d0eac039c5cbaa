"""Matching a patient's nodules across scans after registration, and their growth."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from ai.followup import match_nodules
from ai.registration import Registration


@dataclass(frozen=True)
class Nodule:
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float


def ball(centre: tuple[float, float, float], diameter: float) -> Nodule:
    return Nodule(centre, diameter, math.pi / 6.0 * diameter**3)


def shifted_and_turned(degrees: float, shift: tuple[float, float, float]) -> Registration:
    """current_to_prior: the prior is the current turned about z and shifted."""
    a = math.radians(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    matrix[:3, 3] = shift
    return Registration(matrix)


def test_registered_nodules_pair_up_with_their_growth_and_the_rest_is_new_or_resolved() -> None:
    registration = shifted_and_turned(5.0, (3.0, -4.0, 30.0))
    current = [
        ball((50.0, 20.0, -100.0), 12.0),
        ball((-60.0, 10.0, -150.0), 6.0),
        ball((0, 80, -90), 5),
    ]
    # the prior positions are where the registration sends the current centres
    prior_centres = registration.map_current_to_prior([n.center_xyz for n in current[:2]])
    prior = [
        ball(tuple(prior_centres[1]), 6.0),
        ball(tuple(prior_centres[0]), 10.0),
        ball((90, 90, 0), 7),
    ]
    changes = match_nodules(current, prior, registration, interval_days=365.0)
    matched = {c.current_index: c for c in changes if c.status == "matched"}
    assert set(matched) == {0, 1}
    assert matched[0].prior_index == 1 and matched[1].prior_index == 0
    assert matched[0].distance_mm == pytest.approx(0.0, abs=1e-6)
    assert matched[0].diameter_change_mm == pytest.approx(2.0)
    assert matched[0].diameter_change_pct == pytest.approx(20.0)
    assert matched[0].volume_change_pct == pytest.approx(100.0 * (1.2**3 - 1.0))
    assert matched[0].volume_doubling_days == pytest.approx(365.0 * math.log(2) / math.log(1.2**3))
    assert matched[1].diameter_change_mm == pytest.approx(0.0)
    assert matched[1].volume_doubling_days is None  # unchanged volume
    assert [c.current_index for c in changes if c.status == "new"] == [2]
    assert [c.prior_index for c in changes if c.status == "resolved"] == [2]


def test_without_registration_a_table_shift_breaks_the_pairs() -> None:
    registration = shifted_and_turned(0.0, (0.0, 0.0, 29.0))
    current = [ball((40.0, 0.0, -100.0), 8.0), ball((40.0, 0.0, -71.0), 8.0)]
    prior = [ball(tuple(registration.map_current_to_prior(n.center_xyz)), 8.0) for n in current]
    right = match_nodules(current, prior, registration)
    assert [(c.current_index, c.prior_index) for c in right] == [(0, 0), (1, 1)]
    wrong = match_nodules(current, prior, Registration.identity())
    # raw patient coordinates pair the second current nodule with the first prior one
    assert (1, 0) in [(c.current_index, c.prior_index) for c in wrong]


def test_far_nodules_are_not_paired() -> None:
    changes = match_nodules([ball((0, 0, 0), 6)], [ball((0, 0, 20), 6)], Registration.identity())
    assert sorted(c.status for c in changes) == ["new", "resolved"]
    with pytest.raises(ValueError):
        match_nodules([], [], Registration.identity(), max_distance_mm=0)


def test_registration_round_trips_and_inverts() -> None:
    registration = shifted_and_turned(7.0, (1.0, 2.0, 3.0))
    again = Registration.from_dict(registration.to_dict())
    points = np.array([[10.0, -20.0, 30.0], [0.0, 0.0, 0.0]])
    there = again.map_current_to_prior(points)
    assert np.allclose(again.map_prior_to_current(there), points)
    assert not np.allclose(there, points)
