"""Volume -> lungs -> nodules -> ROIs: seconds per step on one phantom series.

Run from the repository root::

    python -m benchmarks.detect                      # 512 x 512 x 300, CPU (and CUDA when present)
    python -m benchmarks.detect --matrix 256 --slices 150 --repeat 3

The phantom is synthesized first (not timed). Each step is timed with the
device synchronised; the table shows the median over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def _timed(fn: Callable[[], T], device: str) -> tuple[T, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detect", description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", action="append", help="cpu, cuda (default: cpu, plus cuda when present)")
    args = parser.parse_args(argv)

    from ai.lungs import segment_lungs
    from ai.nodules import find_nodules
    from ai.phantom import ScanGeometry, synthesize_study
    from ai.roi import extract_rois

    geometry = ScanGeometry(matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, slices=args.slices)
    started = time.perf_counter()
    study = synthesize_study(seed=args.seed, geometry=geometry)
    volume = study.volume
    print(f"phantom {volume.shape} spacing {volume.spacing} mm, {len(study.nodules)} nodules "
          f"(synthesized in {time.perf_counter() - started:.1f} s, not timed)")
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print()
    print(f"{'device':8s} {'lungs s':>8s} {'nodules s':>10s} {'rois s':>7s} {'total s':>8s} {'nodules':>8s} {'rois':>14s}")
    for device in devices:
        rows: dict[str, list[float]] = {"lungs": [], "nodules": [], "rois": [], "total": []}
        count, shape = 0, ()
        for _ in range(args.repeat):
            mask, t_lungs = _timed(lambda: segment_lungs(volume, device=device), device)
            nodules, t_nodules = _timed(lambda: find_nodules(volume, mask, device=device), device)
            centres = [n.center_xyz for n in nodules]
            rois, t_rois = _timed(lambda: extract_rois(volume, mask, centres, device=device), device)
            for key, value in (("lungs", t_lungs), ("nodules", t_nodules), ("rois", t_rois)):
                rows[key].append(value)
            rows["total"].append(t_lungs + t_nodules + t_rois)
            count, shape = len(nodules), rois.shape
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{device:8s} {med['lungs']:8.2f} {med['nodules']:10.2f} {med['rois']:7.2f} {med['total']:8.2f} "
              f"{count:8d} {str(shape):>14s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
