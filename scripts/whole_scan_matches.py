"""A real whole scan through the node's analysis, beside its matches among the real crops.

Runs ``ai.pipeline.analyse_volume`` (what the worker runs on a received
series: lungs, nodules, ROIs cut as the model asks, codes) on a DICOM series,
takes the detected nodule nearest to a readers' nodule of the crops folder
(same patient), and ranks the crops of *other* patients by the FCDN joint
distance, as the node ranks its catalog. Also cuts the same nodule from its
crop, to show that crop and scan give the same codes. Writes a PNG and
prints the figures::

    python scripts/whole_scan_matches.py --scan DIR --nodules ../shared/data/lidc-nodules \\
        --patient LIDC-IDRI-0001 --out whole_scan_matches.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", type=Path, required=True, help="folder of the DICOM series")
    parser.add_argument("--nodules", type=Path, required=True, help="lidc-nodules folder")
    parser.add_argument("--patient", default="LIDC-IDRI-0001")
    parser.add_argument("--model", type=Path, help="model folder (default: the shipped model)")
    parser.add_argument("--out", type=Path, default=Path("whole_scan_matches.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ai.hashing.codes import TEXTURES
    from ai.hashing.data import crop_rois
    from ai.hashing.infer import encode
    from ai.hashing.metrics import hamming_distances, joint_distances
    from ai.pipeline import analyse_volume
    from ai.readers.lidc_crops import read_nodule_table
    from ai.volume import load_series
    from dicom_node.model import load_model, load_model_dir

    model = load_model_dir(args.model) if args.model else load_model("")
    if model is None:
        print("no model", file=sys.stderr)
        return 1
    files = sorted(p for p in args.scan.rglob("*.dcm"))
    volume = load_series(files)
    analysis = analyse_volume(volume, model.net, model_version=model.version)
    readers = [n for n in read_nodule_table(args.nodules) if n.patient_id == args.patient]
    if not readers or not analysis.nodules:
        print("no nodule of the patient found", file=sys.stderr)
        return 1
    target = np.asarray(readers[0].center_xyz)
    found = int(
        np.argmin([np.linalg.norm(np.subtract(n.center_xyz, target)) for n in analysis.nodules])
    )
    nodule = analysis.nodules[found]
    crops, _ = crop_rois(args.nodules, model=model.net.config)
    own = np.flatnonzero(crops.patient == args.patient)
    others = np.flatnonzero(crops.patient != args.patient)
    codes = encode(model.net, crops.rois)
    scan = analysis.codes
    layers = ("shallow", "middle", "deep")

    def pick(c: object, index: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(getattr(c, layer)[index] for layer in layers)

    from_scan = joint_distances(pick(scan, np.array([found])), pick(codes, others))[0]
    from_crop = joint_distances(pick(codes, own[:1]), pick(codes, others))[0]
    between = [
        int(hamming_distances(getattr(scan, layer)[[found]], getattr(codes, layer)[own[:1]])[0, 0])
        for layer in layers
    ]
    top_scan = others[np.argsort(from_scan, kind="stable")[:10]]
    top_crop = others[np.argsort(from_crop, kind="stable")[:10]]
    print(
        f"{args.patient}: detected nodule {nodule.diameter_mm:.1f} mm at "
        f"{np.linalg.norm(np.subtract(nodule.center_xyz, target)):.1f} mm from the readers' centre "
        f"(readers {readers[0].diameter_mm:.1f} mm)"
    )
    if scan.diameter_mm is not None and codes.diameter_mm is not None:
        print(
            f"network's diameter: scan {scan.diameter_mm[found]:.1f} mm, "
            f"crop {codes.diameter_mm[own[0]]:.1f} mm"
        )
    print(f"Hamming distance scan ROI vs crop ROI per layer (of {scan.n_bits}): {between}")
    shared = len(set(top_crop.tolist()) & set(top_scan.tolist()))
    print(f"the crop's top-10 matches found again in the scan's top-10: {shared}")
    group = ("benign", "malignant")
    middle = crops.rois.shape[1] // 2
    figure, axes = plt.subplots(2, 5, figsize=(10, 5.2))
    tiles = [
        (analysis.rois[found, middle], f"{args.patient}\nwhole scan (node)", "tab:red"),
        (crops.rois[own[0], middle], f"{args.patient}\nits crop", "tab:red"),
    ]
    for rank, j in enumerate(top_scan[:8], start=1):
        m = int(crops.malignancy[j]) if crops.malignancy is not None else -1
        diameter = float(crops.diameter_mm[j]) if crops.diameter_mm is not None else 0.0
        tiles.append(
            (
                crops.rois[j, middle],
                f"#{rank} h={from_scan[np.flatnonzero(others == j)[0]]} {crops.patient[j][-4:]}\n"
                f"{diameter:.1f} mm {TEXTURES[int(crops.texture[j])]} "
                f"{group[m] if m >= 0 else 'rated 3'}",
                "black",
            )
        )
    for axis, (image, text, colour) in zip(axes.ravel(), tiles, strict=False):
        axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        axis.set_title(text, fontsize=7, color=colour)
        axis.axis("off")
    figure.suptitle(
        f"model {model.version}: the nodule as the node cuts it from the whole scan, its crop, "
        "and the 8 nearest crops of other patients (joint Hamming distance)",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
