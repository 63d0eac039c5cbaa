"""Sub-solid family-B nodules rank within the detector's seed budget (issue 11).

On the family-B development cohorts (seeds 4101 and 4102) faint juxtavascular
ground glass never became a candidate: chest-wall blobs that the search
closing takes in used up most of the ``max_seeds`` budget, and at -450 HU
saturation ground glass beside a vessel ranked 127th to 1687th. This test
uses another seed (7301, never used for tuning): its patient 3 has a 12 mm
ground-glass nodule beside a vessel. With main's ranking (saturation -450 HU,
no lung-share gate) it was the 144th seed and its 5.5 mm juxtapleural
neighbour the 44th; at -650 HU with the lung-share gate (``min_seed_lung_share``
0.25, off by default until an FPR model is trained on its candidates) they are
the 14th and the 3rd, so a budget of 40 seeds must find both.
"""

from __future__ import annotations

import numpy as np
import pytest

from ai.lungs import segment_lungs
from ai.nodules import find_nodules
from ai.phantom import ScanGeometry, plan_patient, render_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: The node's 1 mm grid, rendered directly (no resampling).
NODE_GRID = ScanGeometry(matrix=384, pixel_mm=1.0, slice_mm=1.0)


def test_ground_glass_beside_a_vessel_ranks_within_a_small_seed_budget() -> None:
    study = render_study(plan_patient(7301, 3, n_studies=1, family="b"), 0, NODE_GRID)
    ground_glass = [n for n in study.nodules if n.texture == "ground-glass"]
    assert [round(n.diameter_mm) for n in ground_glass] == [12]
    assert ground_glass[0].location == "juxtavascular"
    candidates = find_nodules(
        study.volume, segment_lungs(study.volume), max_seeds=40, min_seed_lung_share=0.25
    )
    for nodule in study.nodules:
        if nodule.diameter_mm < 5.0:
            continue
        hits = [
            c
            for c in candidates
            if np.linalg.norm(np.subtract(c.center_xyz, nodule.center_xyz))
            <= nodule.diameter_mm / 2
        ]
        assert hits, f"{nodule.texture} {nodule.location} {nodule.diameter_mm:.1f} mm missed"
