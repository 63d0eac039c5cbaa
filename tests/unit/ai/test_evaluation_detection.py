"""FROC/CPM (LUNA16 rules), Dice, size classes and figures, on hand-made detections."""

from __future__ import annotations

import numpy as np
import pytest

from ai.evaluation.detection import (
    FROC_FP_RATES,
    Detection,
    ScanResult,
    Truth,
    dice,
    evaluate_detection,
    froc,
    size_class_rows,
)
from ai.evaluation.figures import Tile, froc_png, montage_png, tile_from_volume
from ai.types import Volume

PNG = b"\x89PNG\r\n\x1a\n"


def _scan(
    uid: str, truths: list[tuple[float, float]], detections: list[tuple[float, float, float]]
) -> ScanResult:
    """Truths ``(x, diameter)`` and detections ``(x, confidence, diameter)`` on the x axis."""
    return ScanResult(
        series_instance_uid=uid,
        truths=tuple(Truth((x, 0.0, 0.0), d) for x, d in truths),
        detections=tuple(Detection((x, 0.0, 0.0), c, d) for x, c, d in detections),
    )


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dice(a, b[:2])


def test_froc_counts_each_nodule_once_and_ignores_small_ones() -> None:
    scans = [
        # nodule at 0 (10 mm) hit twice (0.9 and 0.4: the second is neither TP nor FP);
        # nodule at 100 (2 mm) is below 3 mm: a candidate on it is ignored; FP at 50 (0.8)
        _scan(
            "a",
            [(0.0, 10.0), (100.0, 2.0)],
            [(1.0, 0.9, 9.0), (-2.0, 0.4, 9.0), (100.0, 0.95, 2.0), (50.0, 0.8, 5.0)],
        ),
        # nodule at 0 (6 mm) found at 0.3; a detection 4 mm away is outside its 3 mm radius: FP
        _scan("b", [(0.0, 6.0)], [(0.5, 0.3, 6.0), (4.0, 0.7, 5.0)]),
    ]
    result = froc(scans)
    assert result.n_truths == 2 and result.n_scans == 2
    # thresholds 0.9 (1 TP), 0.8 (FP), 0.7 (FP), 0.3 (TP)
    assert result.thresholds == (0.9, 0.8, 0.7, 0.3)
    assert result.sensitivity == (0.5, 0.5, 0.5, 1.0)
    assert result.fps_per_scan == (0.0, 0.5, 1.0, 1.0)
    at = dict(zip(result.rates, result.at_rates, strict=True))
    assert at[0.125] == 0.5 and at[0.5] == 0.5 and at[1.0] == 1.0 and at[8.0] == 1.0
    assert result.cpm == pytest.approx(np.mean(result.at_rates))
    assert result.threshold_at(0.5) == 0.8
    assert result.threshold_at(4.0) == 0.3


def test_perfect_and_empty_detectors() -> None:
    perfect = [_scan(str(i), [(0.0, 8.0)], [(0.0, 0.9, 8.0)]) for i in range(3)]
    assert froc(perfect).cpm == 1.0
    nothing = [_scan(str(i), [(0.0, 8.0)], []) for i in range(3)]
    assert froc(nothing).cpm == 0.0
    with pytest.raises(ValueError):
        froc([])


def test_size_classes_and_report() -> None:
    scans = [
        _scan(
            "a",
            [(0.0, 4.0), (50.0, 10.0), (100.0, 25.0)],
            [(0.0, 0.9, 4.5), (50.0, 0.8, 9.0), (200.0, 0.7, 5.0)],
        ),
        _scan("b", [(0.0, 5.5)], [(0.0, 0.1, 6.5)]),
    ]
    rows = {r.size_class: r for r in size_class_rows(scans, threshold=0.5)}
    assert (
        rows[1].n == 1
        and rows[1].found == 1
        and rows[1].median_abs_diameter_error_mm == pytest.approx(0.5)
    )
    assert rows[2].n == 1 and rows[2].found == 0 and rows[2].sensitivity == 0.0
    assert rows[4].median_abs_diameter_error_mm == pytest.approx(1.0)
    assert rows[7].n == 1 and rows[7].found == 0
    assert rows[3].n == 0 and rows[3].sensitivity is None
    report = evaluate_detection(scans)
    assert report.n_scans == 2 and report.lung_dice_mean is None
    assert report.froc_5mm.n_truths == 3 and report.froc_all.n_truths == 4
    summary = report.to_dict()
    assert set(summary["froc_3mm"]["sensitivity_at_fps_per_scan"]) == {
        str(r) for r in FROC_FP_RATES
    }  # type: ignore[index]
    assert summary["sensitivity_5mm_at_4fp"] == report.froc_5mm.at_rates[5]


def test_figures_are_pngs() -> None:
    scans = [_scan("a", [(0.0, 8.0)], [(0.0, 0.9, 8.0), (40.0, 0.5, 5.0)])]
    assert froc_png(evaluate_detection(scans)).startswith(PNG)
    hu = np.full((5, 40, 40), -850.0, np.float32)
    hu[2, 18:22, 18:22] = 0.0
    volume = Volume(array=hu, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    tile = tile_from_volume(
        volume, volume.voxel_to_world((2, 19.5, 19.5)), 4.0, "hit", "x", fov_mm=20.0, size=20
    )
    assert tile.image.shape == (20, 20) and tile.image[10, 10] > 0.5 and tile.image[0, 0] < 0.2
    assert montage_png(
        [tile, Tile(tile.image, "miss", 3.0, "y"), Tile(tile.image, "fp", 3.0, "z")]
    ).startswith(PNG)
    assert montage_png([]).startswith(PNG)


def test_operating_point_counts_false_positives_reports_and_ignores_irrelevant_marks() -> None:
    import dataclasses

    from ai.evaluation.detection import operating_point

    first = _scan(
        "a", [(0.0, 10.0), (100.0, 4.0)], [(1.0, 0.9, 9.0), (50.0, 0.8, 5.0), (100.0, 0.3, 4.0)]
    )
    # the detection at x = 200 hits a reader's mark that is no LUNA16 nodule: neither true nor false
    second = dataclasses.replace(
        _scan("b", [(0.0, 6.0)], [(200.0, 0.95, 6.0), (300.0, 0.7, 6.0)]),
        ignored=(Truth((200.0, 0.0, 0.0), 8.0),),
    )
    point = operating_point([first, second], 0.5)
    assert point.false_positives == (1, 1)
    assert point.reported == (2, 2)
    assert point.fps_per_scan == 1.0
    assert point.sensitivity == pytest.approx(1 / 3)  # found only the 10 mm one
    assert point.sensitivity_5mm == pytest.approx(1 / 2) and point.missed_5mm == 1
    report = evaluate_detection([first, second], threshold=0.5)
    assert report.operating_point == point
    assert report.to_dict()["operating_point"]["false_positives"] == (1, 1)
    # without the ignored mark, the 0.95 detection is the most confident false positive
    plain = froc([dataclasses.replace(second, ignored=())])
    assert plain.fps_per_scan[0] == 1.0


def test_operating_point_lists_each_missed_nodule_with_its_nearest_detection() -> None:
    from ai.evaluation.detection import operating_point

    scans = [
        # 8 mm nodule at 0: a detection on it scored 0.3 -> below threshold
        # 6 mm nodule at 100: the nearest detection 4 mm off (radius 3), 0.9 -> off centre
        # 12 mm nodule at 300: nearest detection 50 mm away -> no candidate
        # 4 mm nodule at 400: under 5 mm, not listed
        _scan(
            "1.2.3.4.5.6.7.8.9",
            [(0.0, 8.0), (100.0, 6.0), (300.0, 12.0), (400.0, 4.0)],
            [(0.5, 0.3, 7.5), (104.0, 0.9, 4.5), (350.0, 0.2, 5.0)],
        ),
        _scan("2", [(0.0, 7.0)], []),  # a scan without detections
    ]
    point = operating_point(scans, 0.5)
    assert point.missed_5mm == 4 == len(point.missed)
    reasons = [(m.diameter_mm, m.reason) for m in point.missed]
    assert reasons == [
        (8.0, "below threshold"),
        (6.0, "off centre"),
        (12.0, "no candidate"),
        (7.0, "no candidate"),
    ]
    below, off, none, empty = point.missed
    assert below.nearest_mm == pytest.approx(0.5) and below.nearest_probability == 0.3
    assert off.nearest_mm == pytest.approx(4.0) and off.nearest_diameter_mm == 4.5
    assert none.nearest_mm == pytest.approx(50.0)
    assert empty.nearest_mm is None and empty.series_instance_uid == "2"
    as_json = evaluate_detection(scans, threshold=0.5).to_dict()["operating_point"]["missed"]
    assert [m["reason"] for m in as_json] == [r for _, r in reasons]
    assert as_json[1]["center_xyz"] == (100.0, 0.0, 0.0)
