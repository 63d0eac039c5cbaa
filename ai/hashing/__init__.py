"""Multi-layer deep hashing of nodule ROIs (issue 5; FCDN + Siamese hashing papers).

- :mod:`ai.hashing.model`      dense encoder-decoder with shallow / middle / deep hash heads
- :mod:`ai.hashing.losses`     classification + reconstruction + contrastive + quantization
- :mod:`ai.hashing.codes`      sign -> packed bytes, :class:`HashCodes`
  (diameter classes: ``ai.classes``)
- :mod:`ai.hashing.infer`      ``encode(model, rois) -> HashCodes``
- :mod:`ai.hashing.baselines`  LSH and ITQ
- :mod:`ai.hashing.metrics`    mAP, mAP@k, P@k, precision-recall points

Rule (package ``ai``): arrays in, dataclasses out; no files, network or database.
``torch`` is imported by ``model``, ``losses`` and ``infer`` only.
"""

from __future__ import annotations

from ai.hashing.codes import (
    LAYERS,
    TEXTURES,
    HashCodes,
    pack_signs,
    unpack_bits,
)

__all__ = [
    "LAYERS",
    "TEXTURES",
    "HashCodes",
    "pack_signs",
    "unpack_bits",
]
