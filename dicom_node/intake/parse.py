"""Decode a received dataset up to its Pixel Data, and measure what Pixel Data holds.

Validation needs the UIDs, the patient/study/series attributes and the image
description (Rows, Columns, Bits Allocated ...), never the pixel values, so
the C-STORE handler decodes the elements before Pixel Data (PS3.5 7.1) and
reads only the Pixel Data element's header: its declared length and how many
value bytes actually arrived tell a truncated image from a whole one. The
bytes kept on disk are the received ones, untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

__all__ = ["PixelDataExtent", "decode_before_pixels"]

_PIXEL_GROUP = 0x7FE0  # Float/Double Float/Pixel Data (PS3.6: 7FE0,0008 / 0009 / 0010)
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


@dataclass(frozen=True)
class PixelDataExtent:
    """The first pixel element after the decoded attributes.

    ``available`` is how many value bytes arrived (at most the declared
    length); ``encapsulated`` is True for an undefined length (compressed
    frames in items, PS3.5 A.4), whose completeness the decoder checks.
    """

    element: int
    """Tag, e.g. ``0x7FE00010`` (Pixel Data)."""
    available: int
    encapsulated: bool


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group == _PIXEL_GROUP


def decode_before_pixels(
    encoded: bytes | memoryview, transfer_syntax_uid: str
) -> tuple[Dataset, PixelDataExtent | None]:
    """Decode the elements before Pixel Data.

    Parameters
    ----------
    encoded : bytes
        The dataset as received in the C-STORE (no file meta), in
        ``transfer_syntax_uid``; not deflated (the caller decodes deflated
        datasets whole).
    transfer_syntax_uid : str

    Returns
    -------
    dataset : pydicom.dataset.Dataset
        Every top-level element before group 7FE0.
    extent : PixelDataExtent or None
        The first group 7FE0 element, or None if the dataset has none.

    Raises
    ------
    Exception
        Whatever pydicom raises for undecodable bytes (the caller maps it).
    """
    syntax = UID(transfer_syntax_uid)
    fp = BytesIO(encoded)
    dataset = read_dataset(fp, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_at_pixels)
    start, size = fp.tell(), len(encoded)
    if size - start < 8:
        return dataset, None
    order = "<" if syntax.is_little_endian else ">"
    header = bytes(encoded[start : start + 12])
    group, element = struct.unpack(order + "HH", header[:4])
    if syntax.is_implicit_VR:
        (length,), value_at = struct.unpack(order + "L", header[4:8]), start + 8
    elif header[4:6] in _LONG_VRS:
        if len(header) < 12:
            return dataset, PixelDataExtent((group << 16) | element, 0, False)
        (length,), value_at = struct.unpack(order + "L", header[8:12]), start + 12
    else:
        (length,), value_at = struct.unpack(order + "H", header[6:8]), start + 8
    arrived = max(0, size - value_at)
    encapsulated = length == _UNDEFINED
    return dataset, PixelDataExtent(
        (group << 16) | element, arrived if encapsulated else min(length, arrived), encapsulated
    )
