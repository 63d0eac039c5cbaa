"""storage: everything that persists (instance files, catalog, hash index).

Rule: knows UIDs and bytes, not associations; never imports ``dicom_node`` or
``pynetdicom``.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
