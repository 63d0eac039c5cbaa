"""Phantom speed: synthesize and write one 512 x 512 x 300 study; patches per second.

Run from the repository root::

    python -m benchmarks.synth                  # 512 x 512 x 300, 0.7 mm pixels, 1.25 mm slices
    python -m benchmarks.synth --quick          # 256 x 256 x 150 (a smoke run)
    python -m benchmarks.synth --workers 16     # patch mode on 16 processes too

Rows (seconds, best of ``--repeat``):

- ``plan patient``       anatomy, vessel trees, nodule placement;
- ``render study``       HU volume, lung and nodule masks (blur and noise included);
- ``write DICOM <ts>``   the series as files, for each transfer syntax;
- ``load_series``        the files back to a HU volume (acquired grid, then 1 mm);
- ``patch mode``         32 x 64 x 64 patches at 1 mm, patches per second, 1 and
                         ``--workers`` processes (after a warm-up that builds the
                         patient pool).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


def _best(func: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.synth", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="256 x 256 x 150 instead of 512 x 512 x 300"
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions, best kept (default 1)")
    parser.add_argument(
        "--patches", type=int, default=256, help="patches per patch-mode run (default 256)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for patch mode"
    )
    args = parser.parse_args(argv)

    from ai.phantom import ScanGeometry, identity_for, plan_patient, render_study, study_datasets
    from ai.phantom.patches import make_patches
    from ai.volume import load_series

    if args.quick:
        geometry = ScanGeometry(matrix=256, pixel_mm=1.4, slice_mm=2.5, slices=150)
    else:
        geometry = ScanGeometry(matrix=512, pixel_mm=0.7, slice_mm=1.25, slices=300)
    size = f"{geometry.matrix}x{geometry.matrix}x{geometry.slices}"
    rows: list[tuple[str, str, float, str]] = []
    print(f"cores: {os.cpu_count()}, study {size}", flush=True)

    seconds, plan = _best(lambda: plan_patient(0, 0), args.repeat)
    rows.append(
        ("plan patient", "1 patient", seconds, f"{len(plan.patient.vessels)} vessel segments")
    )
    seconds, study = _best(lambda: render_study(plan, 0, geometry), args.repeat)
    rows.append(
        ("render study", size, seconds, f"{study.volume.array.nbytes / 2**20:.0f} MiB int16")
    )
    render_seconds = seconds
    with tempfile.TemporaryDirectory() as tmp:
        for syntax in ("explicit", "jpeg-ls", "jpeg2000"):
            folder = Path(tmp) / syntax
            folder.mkdir()

            def write(folder: Path = folder, syntax: str = syntax) -> list[Path]:
                identity = identity_for(0, 0, 0, head_first=True)
                paths = []
                for ds in study_datasets(study, identity, transfer_syntax=syntax):
                    path = folder / f"CT_{int(ds.InstanceNumber):04d}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    paths.append(path)
                return paths

            seconds, paths = _best(write, args.repeat)
            megabytes = sum(p.stat().st_size for p in paths) / 2**20
            rows.append((f"write DICOM {syntax}", size, seconds, f"{megabytes:.0f} MiB on disk"))
            if syntax in ("explicit", "jpeg-ls"):
                total = render_seconds + seconds
                rows.append(
                    (f"synthesize + write ({syntax})", size, total, "one study, end to end")
                )
            if syntax == "jpeg-ls":
                seconds, _ = _best(partial(load_series, paths, spacing=None), args.repeat)
                rows.append(
                    ("load_series (acquired grid)", size, seconds, "decode JPEG-LS, sort, HU")
                )
                seconds, vol = _best(partial(load_series, paths), args.repeat)
                rows.append(("load_series (1 mm)", size, seconds, f"-> {vol.shape}"))

    make_patches(8, seed=1, patients=4)  # warm the patient pool in this process
    for workers in sorted({1, max(1, args.workers)}):
        n = args.patches if workers > 1 else max(32, args.patches // 4)
        job = partial(make_patches, n, seed=1, patients=4, workers=workers)
        seconds, batch = _best(job, args.repeat)
        rows.append(
            (
                f"patch mode, {workers} process(es)",
                f"{n} x 32x64x64",
                seconds,
                f"{len(batch) / seconds:.0f} patches/s",
            )
        )

    print()
    print("| step | size | seconds | note |")
    print("| --- | --- | ---: | --- |")
    for step, what, seconds, note in rows:
        print(f"| {step} | {what} | {seconds:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
