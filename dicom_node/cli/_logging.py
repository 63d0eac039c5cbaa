"""Logging set-up, done once at the entry point (never on import)."""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

from dicom_node.settings import Settings

#: One format for stderr and the log file.
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class WithholdPeerValues(logging.Filter):
    """Withhold the values pynetdicom quotes from what a peer sent.

    pynetdicom warns about a non-conformant element of a request with its
    value (``Non-conformant 'Affected SOP Instance UID' value '…'``); a peer
    can put anything there, a patient's name included. The element's name
    stays, the value goes. Set on the handlers, so it sees every pynetdicom
    module's records.
    """

    _VALUE = re.compile(r"(value\s*)'[^']*'")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom"):
            message = record.getMessage()
            withheld = self._VALUE.sub(r"\1(withheld)", message)
            if withheld != message:
                record.msg, record.args = withheld, None
        return True


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
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(WithholdPeerValues())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    for name in ("dicom_node", "ai", "storage"):
        logging.getLogger(name).setLevel(level)
    # pynetdicom is chatty at INFO (one line per PDU); keep its warnings.
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))


def log_file(settings: Settings) -> Path | None:
    """Where ``dicom-node serve`` writes its log (``logging.file`` below ``data_dir``), or None."""
    if not settings.logging.file:
        return None
    return settings.data_dir / settings.logging.file


def add_log_file(path: Path, *, max_bytes: int, backups: int) -> None:
    """Also log to ``path``, rotated at ``max_bytes`` keeping ``backups`` older files.

    The file gets the stderr handler's format and is readable by its owner
    and group only. Adding the same file twice does nothing.
    """
    root = logging.getLogger()
    target = str(path.resolve())
    for handler in root.handlers:
        if isinstance(handler, RotatingFileHandler) and handler.baseFilename == target:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    os.chmod(path, 0o640)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(WithholdPeerValues())
    root.addHandler(handler)
