"""Fixtures of the AI unit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Train on one thread: the same network whatever else runs on the machine.

    With several threads the order of float reductions follows the scheduler:
    at the small sizes of these tests that moved a cross-family mAP from 0.442
    to 0.403 between two runs of the same seeds (the second beside a CPU-heavy
    job), enough to cross a threshold. Tests that train and assert a quality
    threshold use this fixture.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
