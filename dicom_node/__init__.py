"""dicom-node: the DICOM edge and the application shell.

Rule: only this package imports pynetdicom; it may use ``ai`` and ``storage``,
which never import it.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
