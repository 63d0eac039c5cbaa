"""Evaluation of the ai steps against ground truth (pure: figures come back as PNG bytes).

- :mod:`ai.evaluation.detection`: lung Dice, FROC/CPM (LUNA16 rules), per-size-class table.
- :mod:`ai.evaluation.figures`: FROC plot and detection montage as PNG bytes.
"""

from __future__ import annotations
