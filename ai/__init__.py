"""ai: pure computation on arrays.

Rule: arrays in, dataclasses out; no network or database; never imports
``dicom_node``, ``storage``, ``pynetdicom`` or ``sqlalchemy``. Files are read
and written only by ``ai.readers`` (public datasets), ``ai.phantom`` (synthetic
cohorts) and the file entry points of ``ai.volume`` (``load_series`` given
paths, ``read_image``, ``write_image``); ``tests/test_architecture.py`` checks it.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
