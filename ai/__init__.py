"""ai: pure computation on arrays.

Rule: arrays in, dataclasses out; no files, network or database; never imports
``dicom_node``, ``storage``, ``pynetdicom`` or ``sqlalchemy``.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
