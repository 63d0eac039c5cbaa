"""``dicom-node similar``: similar nodules of other patients, and the same patient's priors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai.hashing.codes import LAYERS
from dicom_node.cli._common import add_settings_arguments, open_catalog, settings_from_args

if TYPE_CHECKING:
    from dicom_node.retrieval.privacy import PrivacyPolicy
    from dicom_node.retrieval.similar import NoduleCases
    from storage.catalog import NoduleRecord


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "similar",
        help="list similar prior cases for a study, a series or a nodule",
        description="Similar nodules of other patients (coarse-to-fine hash search) and the same "
        "patient's earlier measurements of each nodule.",
    )
    add_settings_arguments(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--study", metavar="UID", help="StudyInstanceUID of the index study")
    target.add_argument("--series", metavar="UID", help="SeriesInstanceUID of the index series")
    target.add_argument("--nodule", type=int, metavar="ID", help="nodule id (from --json output)")
    parser.add_argument(
        "-k", type=int, help="matches per nodule (default: similarity.matches_per_nodule)"
    )
    parser.add_argument(
        "--model-version", help="model version (default: the one with most nodules)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--png", type=Path, metavar="FILE", help="write a gallery: each nodule beside its matches"
    )
    parser.add_argument(
        "--show-phi", action="store_true", help="show other patients' IDs (default: case ids)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return 2
    from dicom_node.retrieval.privacy import PrivacyPolicy, privacy_key
    from dicom_node.retrieval.similar import SimilarityIndex, similar_cases

    with open_catalog(settings) as catalog:
        versions = catalog.nodules.model_versions()
        version = args.model_version or (versions[0] if len(versions) == 1 else None)
        if version is None:
            print(
                "dicom-node: no indexed nodules yet"
                if not versions
                else f"dicom-node: several model versions {versions}; "
                "choose one with --model-version",
                file=sys.stderr,
            )
            return 1
        if args.nodule is not None:
            queries = list(catalog.nodules.by_id([args.nodule]).values())
        else:
            queries = catalog.nodules.of(
                model_version=version,
                study_instance_uid=args.study,
                series_instance_uid=args.series,
            )
        if not queries:
            print("dicom-node: no nodules found for that query", file=sys.stderr)
            return 1
        policy = PrivacyPolicy(
            settings.access, privacy_key(catalog, legacy_file=settings.data_dir / "privacy.key")
        )
        cases = similar_cases(
            # The node's snapshot and the rows after it; the node alone writes snapshots.
            SimilarityIndex(
                catalog, version, snapshot_dir=settings.index_dir, write_snapshots=False
            ).retriever(),
            queries,
            matches_per_nodule=args.k or settings.similarity.matches_per_nodule,
        )
        report = [_record(case, policy, args.show_phi) for case in cases]
    if args.png:
        _gallery(report, args.png)
    _strip_thumbnails(report)
    if args.json:
        print(json.dumps({"model_version": version, "nodules": report}, indent=2))
    else:
        print(_table(report, version))
    if args.png:
        print(f"gallery written to {args.png}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _nodule(nodule: NoduleRecord) -> dict[str, Any]:
    from ai.classes import SIZE_CLASS_LABELS

    return {
        "nodule_id": nodule.id,
        "study_instance_uid": nodule.study_instance_uid,
        "series_instance_uid": nodule.series_instance_uid,
        "center_xyz_mm": list(nodule.center_xyz),
        "diameter_mm": round(nodule.diameter_mm, 2),
        "long_axis_mm": round(nodule.long_axis_mm, 2),
        "size_class": SIZE_CLASS_LABELS[nodule.size_class],
        "texture": nodule.texture,
        "laterality": nodule.laterality,
        "thumbnail": nodule.thumbnail,
    }


def _record(case: NoduleCases, policy: PrivacyPolicy, show_phi: bool) -> dict[str, Any]:
    return {
        "query": {**_nodule(case.nodule), "study_date": case.nodule.study_date},
        "matches": [
            {
                "rank": m.rank,
                "distance": m.distance,
                "layer_distances": dict(zip(LAYERS, m.layer_distances, strict=True)),
                "driving_layer": m.driving_layer,
                "embedding_distance": round(m.embedding_distance, 4),
                "study_date": m.nodule.study_date,
                "patient": policy.label(
                    m.nodule.patient_id, m.nodule.patient_name, reveal=show_phi
                ).patient_id,
                **_nodule(m.nodule),
            }
            for m in case.similar
        ],
        "same_patient_priors": [
            {
                "study_instance_uid": p.study_instance_uid,
                "study_date": p.study_date,
                "diameter_mm": round(p.nodule.diameter_mm, 2),
                "growth_mm": round(p.growth_mm, 2),
                "growth_percent": round(p.growth_percent, 1),
            }
            for p in case.priors
        ],
    }


def _strip_thumbnails(report: list[dict[str, Any]]) -> None:
    for entry in report:
        entry["query"].pop("thumbnail", None)
        for match in entry["matches"]:
            match.pop("thumbnail", None)


def _table(report: list[dict[str, Any]], version: str) -> str:
    lines = [
        f"model {version}; matches in rank order: d = embedding distance, which ranks them; "
        "h = joint Hamming distance of the hash codes, which found them (coarse search)"
    ]
    for entry in report:
        q = entry["query"]
        lines.append(
            f"\nnodule {q['nodule_id']} of study {q['study_instance_uid']} "
            f"({q['study_date'] or 'no date'}): {q['diameter_mm']:.1f} mm {q['texture']}, "
            f"{q['laterality']} lung, class {q['size_class']}"
        )
        lines.append(
            f"  {'rank':>4}  {'d':>6}  {'h':>3}  {'layer':<7} {'date':<9} {'size':>8}  "
            f"{'texture':<12} {'patient':<18} study UID"
        )
        for m in entry["matches"]:
            lines.append(
                f"  {m['rank']:>4}  {m['embedding_distance']:>6.3g}  {m['distance']:>3.0f}  "
                f"{m['driving_layer']:<7} {m['study_date'] or '':<9} {m['diameter_mm']:>5.1f} mm  "
                f"{m['texture']:<12} {m['patient']:<18} {m['study_instance_uid']}"
            )
        if not entry["matches"]:
            lines.append("  no similar nodule of another patient")
        for p in entry["same_patient_priors"]:
            lines.append(
                f"  same patient {p['study_date']}: {p['diameter_mm']:.1f} mm "
                f"({p['growth_mm']:+.1f} mm, {p['growth_percent']:+.0f}%)"
            )
    return "\n".join(lines)


def _thumbnail(nodule: dict[str, Any]) -> Any:
    import numpy as np

    blob = nodule.get("thumbnail")
    if not blob:
        return np.zeros((64, 64), np.uint8)
    side = int(round(len(blob) ** 0.5))
    return np.frombuffer(blob, np.uint8).reshape(side, side)


def _gallery(report: list[dict[str, Any]], path: Path) -> None:
    """Each nodule beside its matches: the key-image montage's layout, as a PNG."""
    import matplotlib.image

    from dicom_node.results.montage import MontageRow, render_montage

    rows = [
        MontageRow(
            label=f"query nodule {e['query']['nodule_id']}\n{e['query']['diameter_mm']:.1f} mm "
            f"{e['query']['texture']}",
            query=_thumbnail(e["query"]),
            matches=[
                (
                    f"#{m['rank']} d={m['embedding_distance']:.3g}\n{m['diameter_mm']:.1f} mm "
                    f"{m['study_date'] or ''}",
                    _thumbnail(m),
                )
                for m in e["matches"]
            ],
        )
        for e in report
    ]
    title = (
        "Similar nodules of other patients, each query (red) followed by its matches in rank "
        "order; d = embedding distance, which ranks them. Not for diagnosis."
    )
    matplotlib.image.imsave(path, render_montage(rows, title))
