"""Volume -> lungs -> candidates -> false-positive reduction -> ROIs: seconds per step.

Run from the repository root::

    python -m benchmarks.detect                      # 512 x 512 x 300, CPU (and CUDA when present)
    python -m benchmarks.detect --node-grid          # the same read on the node's 1 mm grid
    python -m benchmarks.detect --matrix 256 --slices 150 --repeat 3

The phantom is synthesized first (not timed). Each step is timed with the
device synchronised; the table shows the median over ``--repeat`` runs and
the machine's load average (shared machines).
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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detect", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--device", action="append", help="cpu, cuda (default: cpu, plus cuda when present)"
    )
    parser.add_argument(
        "--node-grid", action="store_true", help="resample to 1 mm first, as the worker does"
    )
    args = parser.parse_args(argv)

    import os

    from ai.fpr import score_candidates
    from ai.lungs import segment_lungs
    from ai.nodules import find_nodules
    from ai.phantom import ScanGeometry, synthesize_study
    from ai.roi import extract_rois
    from dicom_node.model import shipped_fpr

    geometry = ScanGeometry(
        matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, slices=args.slices
    )
    started = time.perf_counter()
    study = synthesize_study(seed=args.seed, geometry=geometry)
    volume = study.volume
    if args.node_grid:
        from ai.volume import resample

        volume = resample(volume, (1.0, 1.0, 1.0))
    print(
        f"phantom {volume.shape} spacing {volume.spacing} mm, {len(study.nodules)} nodules "
        f"(synthesized in {time.perf_counter() - started:.1f} s, not timed)"
    )
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; grid {volume.shape}")
    print(f"load average (1 min) before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print(
        f"{'device':8s} {'lungs s':>8s} {'cands s':>8s} {'fpr s':>6s} {'rois s':>7s}"
        f" {'total s':>8s}"
        f" {'cands':>6s} {'rois':>14s}"
    )
    for device in devices:
        rows: dict[str, list[float]] = {k: [] for k in ("lungs", "nodules", "fpr", "rois", "total")}
        count, shape = 0, ()
        fpr = shipped_fpr(device)
        for _ in range(args.repeat):
            mask, t_lungs = _timed(lambda: segment_lungs(volume, device=device), device)
            nodules, t_nodules = _timed(lambda: find_nodules(volume, mask, device=device), device)
            scored, t_fpr = _timed(
                lambda: score_candidates(fpr, volume, nodules, device=device), device
            )
            centres = [n.center_xyz for n in scored]
            rois, t_rois = _timed(
                lambda: extract_rois(volume, mask, centres, device=device), device
            )
            times = {"lungs": t_lungs, "nodules": t_nodules, "fpr": t_fpr, "rois": t_rois}
            for key, value in times.items():
                rows[key].append(value)
            rows["total"].append(t_lungs + t_nodules + t_fpr + t_rois)
            count, shape = len(nodules), rois.shape
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(
            f"{device:8s} {med['lungs']:8.2f} {med['nodules']:8.2f} {med['fpr']:6.2f}"
            f" {med['rois']:7.2f}"
            f" {med['total']:8.2f} {count:6d} {str(shape):>14s}"
        )
    print(f"load average (1 min) after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
