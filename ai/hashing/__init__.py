"""Multi-layer deep hashing of nodule ROIs (issue 5; FCDN + Siamese hashing papers).

- :mod:`ai.hashing.model`      dense encoder-decoder with shallow / middle / deep hash heads
- :mod:`ai.hashing.losses`     classification + reconstruction + contrastive + quantization
- :mod:`ai.hashing.codes`      sign -> packed bytes, :class:`HashCodes`, the layer names
  (diameter classes and textures: ``ai.classes``)
- :mod:`ai.hashing.distance`   the FCDN joint distance, written once (metrics, index, retrieval)
- :mod:`ai.hashing.serialization`  weights as bytes and their version id (what serving loads)
- :mod:`ai.hashing.infer`      ``encode(model, rois) -> HashCodes``
- :mod:`ai.hashing.baselines`  LSH and ITQ
- :mod:`ai.hashing.metrics`    mAP, mAP@k, P@k, precision-recall points

Rule (package ``ai``): arrays in, dataclasses out; no files, network or database.
``torch`` is imported by ``model``, ``losses``, ``infer`` and ``train``; serving
uses ``model``, ``infer`` and ``serialization``, never ``train``, ``losses`` or ``data``.
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
