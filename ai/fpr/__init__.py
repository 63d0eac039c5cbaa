"""Learned false-positive reduction of nodule candidates (as the LUNA16 systems do).

The blob detector (:mod:`ai.nodules`) is tuned for sensitivity: on a real
chest CT it proposes tens of candidates, most of them vessel crossings,
bronchial walls, scars and pleural bumps. A small 3-D CNN looks at each
candidate and gives the probability that it is a nodule:

- :mod:`ai.fpr.patches`  the network's input: a 3-D patch around each
  candidate, limited to the candidate's own slices, plus its measurements
- :mod:`ai.fpr.model`    :class:`FprNet`, 3 convolution stages and a small head
- :mod:`ai.fpr.infer`    :func:`score_candidates`, the model from its bytes and card
- :mod:`ai.fpr.data`     training samples from real LIDC-IDRI crops and scans
  and from phantoms (training only; serving never imports it)
- :mod:`ai.fpr.train`    the training loop (training only)

Rule (package ``ai``): arrays in, dataclasses out; the shipped weights are
package data (``ai/weights/fpr``) that the node reads (``dicom_node.model.load_fpr``).
"""

from __future__ import annotations

from ai.fpr.infer import FprModel, fpr_from_bytes, score_candidates
from ai.fpr.model import FprConfig, FprNet

__all__ = ["FprConfig", "FprModel", "FprNet", "fpr_from_bytes", "score_candidates"]
