"""Reading a stored series back: headers once, pixel data once, through the store.

Every read goes through :meth:`storage.instances.InstanceStore.open`, the
seam a test counts reads with.
"""

from __future__ import annotations

from collections.abc import Sequence

import pydicom
from pydicom.dataset import Dataset

from storage.instances import InstanceStore

__all__ = ["read_datasets", "read_headers"]


def read_headers(store: InstanceStore, relative_paths: Sequence[str]) -> list[Dataset]:
    """The stored instances without their pixel data, in the given order."""
    headers: list[Dataset] = []
    for path in relative_paths:
        with store.open(path) as handle:
            headers.append(pydicom.dcmread(handle, stop_before_pixels=True))
    return headers


def read_datasets(store: InstanceStore, relative_paths: Sequence[str]) -> list[Dataset]:
    """The stored instances, whole (for their pixel data), in the given order."""
    datasets: list[Dataset] = []
    for path in relative_paths:
        with store.open(path) as handle:
            datasets.append(pydicom.dcmread(handle))
    return datasets
