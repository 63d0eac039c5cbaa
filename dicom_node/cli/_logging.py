"""Logging set-up, done once at the entry point (never on import)."""

from __future__ import annotations

import logging
import logging.config
import sys


def configure_logging(level: int = logging.INFO) -> None:
    """Configure the root logger for the command line if nothing else has.

    Parameters
    ----------
    level : int
        Level for the ``dicom_node``, ``ai`` and ``storage`` loggers.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    for name in ("dicom_node", "ai", "storage"):
        logging.getLogger(name).setLevel(level)
    # pynetdicom is chatty at INFO (one line per PDU); keep its warnings.
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))
