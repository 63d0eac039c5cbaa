"""``dicom-node synth OUT``: write a synthetic chest-CT cohort with ground truth.

Examples::

    dicom-node synth cohort --patients 4 --seed 7 --preview
    dicom-node synth small --patients 2 --matrix 128 --pixel-mm 2.5 --slice-mm 2 --scale 0.6 \\
        --compression jpeg-ls
    dicom-node synth luna --patients 2 --format luna16      # .mhd/.raw + annotations.csv
    dicom-node synth lidc --patients 1 --format lidc        # DICOM + readers' XML
    dicom-node synth train --format patches --count 5000 --workers 16   # patches.npz
    dicom-node synth other --patients 10 --seed 4242 --family b   # the independent family B
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic chest-CT studies with known nodules (DICOM + truth)",
        description="Synthesize a cohort of chest CT studies (a prior and follow-ups per "
        "patient) with "
        "annotations.csv (LUNA16 form), truth.json and lung masks.",
    )
    parser.add_argument("out", type=Path, help="output directory")
    cohort = parser.add_argument_group("Cohort Options")
    cohort.add_argument("--patients", type=int, default=4, help="number of patients (default 4)")
    cohort.add_argument(
        "--seed", type=int, default=0, help="seed; same seed, same files (default 0)"
    )
    cohort.add_argument("--studies", type=int, default=2, help="studies per patient (default 2)")
    cohort.add_argument("--nodules", type=int, default=4, help="lesions per patient (default 4)")
    cohort.add_argument(
        "--scale", type=float, default=1.0, help="anatomy size factor (default 1.0)"
    )
    cohort.add_argument(
        "--noise", type=float, default=20.0, help="image noise std in HU (default 20)"
    )
    cohort.add_argument(
        "--family",
        choices=("a", "b"),
        default="a",
        help="phantom family: a (analytic, default) or b (independent: other vessels, real "
        "LIDC-IDRI nodule shapes, other noise and kernels); for DICOM, LUNA16, LIDC and patches",
    )
    scan = parser.add_argument_group("Scan Options")
    scan.add_argument("--matrix", type=int, default=512, help="rows = columns (default 512)")
    scan.add_argument("--pixel-mm", type=float, default=0.7, help="pixel size in mm (default 0.7)")
    scan.add_argument(
        "--slice-mm", type=float, default=1.25, help="slice spacing/thickness in mm (default 1.25)"
    )
    scan.add_argument(
        "--slices", type=int, default=None, help="number of slices (default: cover the lungs)"
    )
    scan.add_argument(
        "--orientation",
        choices=("mixed", "head-first", "feet-first"),
        default="mixed",
        help="patient position of the series (default mixed)",
    )
    output = parser.add_argument_group("Output Options")
    output.add_argument(
        "--compression",
        choices=("none", "jpeg-ls", "jpeg2000"),
        default="none",
        help="lossless pixel compression (default none)",
    )
    output.add_argument(
        "--format",
        choices=("dicom", "luna16", "lidc", "patches"),
        default="dicom",
        help="dicom cohort (default), LUNA16 .mhd/.raw sample, LIDC-IDRI DICOM + XML sample, "
        "or OUT/patches.npz of labelled 3-D training patches (patch mode)",
    )
    patches = parser.add_argument_group("Patch Mode Options (--format patches)")
    patches.add_argument("--count", type=int, default=1000, help="patches (default 1000)")
    patches.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=(32, 64, 64),
        metavar=("Z", "Y", "X"),
        help="patch size in voxels (default 32 64 64)",
    )
    patches.add_argument("--patch-mm", type=float, default=1.0, help="voxel size (default 1 mm)")
    output.add_argument(
        "--preview", action="store_true", help="also write OUT/preview.png (dicom format)"
    )
    output.add_argument(
        "--workers", type=int, default=1, help="processes writing patients in parallel"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ai.phantom import ScanGeometry, write_cohort

    geometry = ScanGeometry(
        matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, slices=args.slices
    )
    started = time.perf_counter()
    if args.format == "patches":
        return _write_patches(args)
    if args.format != "dicom":
        from ai.phantom import first_studies
        from ai.readers.lidc import write_lidc_sample
        from ai.readers.luna16 import write_luna16_sample

        writer = {"luna16": write_luna16_sample, "lidc": write_lidc_sample}[args.format]
        studies = first_studies(
            args.patients,
            seed=args.seed,
            geometry=geometry,
            anatomy_scale=args.scale,
            noise_hu=args.noise,
            family=args.family,
        )
        written = writer(args.out, studies, seed=args.seed)
        print(f"wrote {len(written)} {args.format} scans (with their annotations) to {args.out}")
        return 0
    summary = write_cohort(
        args.out,
        patients=args.patients,
        seed=args.seed,
        studies_per_patient=args.studies,
        nodules_per_patient=args.nodules,
        geometry=geometry,
        anatomy_scale=args.scale,
        transfer_syntax="explicit" if args.compression == "none" else args.compression,
        orientation=args.orientation,
        noise_hu=args.noise,
        workers=args.workers,
        family=args.family,
    )
    elapsed = time.perf_counter() - started
    print(f"{'patients':>9} {'studies':>8} {'nodules':>8} {'files':>7} {'seconds':>8}")
    print(
        f"{summary.patients:>9} {summary.studies:>8} {summary.nodules:>8} {summary.files:>7} "
        f"{elapsed:>8.1f}"
    )
    print(f"annotations: {summary.annotations_csv}\ntruth:       {summary.truth_json}")
    if args.preview:
        from ai.phantom.preview import preview_cohort

        png = preview_cohort(args.out, args.out / "preview.png")
        print(f"preview:     {png}")
    return 0


def _write_patches(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from ai.phantom.patches import make_patches

    started = time.perf_counter()
    batch = make_patches(
        args.count,
        seed=args.seed,
        size_zyx=tuple(args.patch_size),
        spacing_mm=args.patch_mm,
        anatomy_scale=args.scale,
        noise_hu=args.noise,
        workers=args.workers,
        family=args.family,
    )
    elapsed = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "patches.npz"
    np.savez_compressed(path, **dataclasses.asdict(batch))
    print(
        f"{len(batch)} patches ({int(batch.has_nodule.sum())} with a nodule) in {elapsed:.1f} s "
        f"({len(batch) / elapsed:.0f}/s): {path}"
    )
    return 0
