from __future__ import annotations

import numpy as np
import pytest

from ai.types import Volume


def test_world_voxel_round_trip_with_feet_first_direction() -> None:
    direction = np.diag([1.0, 1.0, -1.0])
    volume = Volume(np.zeros((4, 5, 6), np.float32), (2.5, 0.7, 0.7), (-180.0, -170.0, 100.0), direction)
    world = volume.voxel_to_world([3, 2, 1])
    np.testing.assert_allclose(world, [-180.0 + 0.7, -170.0 + 1.4, 100.0 - 7.5])
    np.testing.assert_allclose(volume.world_to_voxel(world), [3, 2, 1])


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="3-D"):
        Volume(np.zeros((4, 5)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((4, 5, 6)), (0.0, 1.0, 1.0), (0.0, 0.0, 0.0))
