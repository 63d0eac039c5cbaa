"""The similar-case SR and the key-image montage: content, round trip, determinism."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pydicom.config
import pytest

from dicom_node.results.montage import MontageRow, build_key_image_montage
from dicom_node.results.sr import CODING_SCHEME, ModelInfo, NoduleFinding, build_similarity_sr
from tests.factories import SR_MODEL as MODEL
from tests.factories import SR_UIDS as UIDS
from tests.factories import ct_slice, sr_evidence, sr_inputs


@pytest.fixture
def evidence():
    return [
        ct_slice(i, study_instance_uid="1.2.3", series_instance_uid="1.2.3.4") for i in range(3)
    ]


def _strict_round_trip(dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    saved = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        buffer.seek(0)
        read = pydicom.dcmread(buffer)
        for _ in read.iterall():  # decode every element strictly
            pass
        return read
    finally:
        pydicom.config.settings.reading_validation_mode = saved


def _content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _items(ds, meaning: str):
    return [
        item
        for item in _content_items(ds)
        if "ConceptNameCodeSequence" in item
        and item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def test_sr_holds_every_nodule_its_similar_cases_and_priors(evidence) -> None:
    findings, similar, priors = sr_inputs()
    sr = _strict_round_trip(build_similarity_sr(evidence, findings, similar, priors, MODEL, UIDS))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == "1.2.3" and sr.PatientID == evidence[0].PatientID
    assert [i.TextValue for i in _items(sr, "Tracking Identifier")] == ["Nodule 1", "Nodule 2"]
    # Nodule 2 has no similar case: no empty container (ContentSequence is type 1C).
    assert len(_items(sr, "Similar prior cases (other patients)")) == 1
    assert [i.UID for i in _items(sr, "Study Instance UID")] == ["1.2.9", "1.2.10", "1.2.8"]
    assert [i.TextValue for i in _items(sr, "Matched patient")] == ["CASE-AB12", "CASE-CD34"]
    # Rank 1 has the larger Hamming distance: the distance that ranks is there too.
    ranking = _items(sr, "Embedding distance (ranks the cases)")
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in ranking] == [0.12, 0.31]
    growth = _items(sr, "Diameter change, percent")
    assert float(growth[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(17.1)
    doubling = _items(sr, "Volume doubling time")
    assert float(doubling[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(521.0)
    assert doubling[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "d"
    # Nodule 1 carries its probability; nodule 2, without one, has no such item.
    probability = _items(sr, "Probability of a nodule")
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in probability] == [0.83]
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == CODING_SCHEME
    assert [i.TextValue for i in _items(sr, "Algorithm Version")] == [MODEL.version] * 2
    # No image or composite reference may point into another patient's study.
    assert not [i for i in _content_items(sr) if i.ValueType in ("IMAGE", "COMPOSITE")]


def test_sr_names_the_detection_settings_beside_the_hashing_model(evidence) -> None:
    findings, similar, priors = sr_inputs()
    sr = _strict_round_trip(build_similarity_sr(evidence, findings, similar, priors, MODEL, UIDS))
    # TID 4019 Algorithm Parameters, in every measurement group (one per nodule).
    parameters = [i.TextValue for i in _items(sr, "Algorithm Parameters")]
    assert parameters == list(MODEL.parameters) * 2
    bare = ModelInfo(MODEL.name, MODEL.version)
    plain = _strict_round_trip(build_similarity_sr(evidence, findings, similar, priors, bare, UIDS))
    assert _items(plain, "Algorithm Parameters") == []


def test_sr_without_nodules_is_valid_and_deterministic(evidence) -> None:
    first = build_similarity_sr(evidence, [], {}, {}, MODEL, UIDS)
    second = build_similarity_sr(evidence, [], {}, {}, MODEL, UIDS)
    read = _strict_round_trip(first)
    assert [i.TextValue for i in _items(read, "Tracking Identifier")] == ["Lungs"]
    (summary,) = _items(read, "CAD Processing and Findings Summary")
    assert summary.ConceptCodeSequence[0].CodeMeaning.startswith(
        "All algorithms succeeded; without findings"
    )
    for ds in (first, second):  # the clock is the only input not passed in
        for keyword in (
            "ContentDate",
            "ContentTime",
            "InstanceCreationDate",
            "InstanceCreationTime",
        ):
            if keyword in ds:
                delattr(ds, keyword)
        for item in ds.get("ContributingEquipmentSequence", []):
            del item.ContributionDateTime
    assert first == second


def test_bad_vocabulary_is_refused(evidence) -> None:
    finding = NoduleFinding(
        "1.2.3.4.100", "Nodule 1", (0.0, 0.0, 0.0), 5.0, 5.0, 60.0, 0.0, "calcified", "right"
    )
    with pytest.raises(KeyError):
        build_similarity_sr(evidence, [finding], {}, {}, MODEL, UIDS)
    with pytest.raises(ValueError, match="evidence"):
        build_similarity_sr([], [], {}, {}, MODEL, UIDS)


def test_montage_is_an_rgb_secondary_capture_in_the_index_study(evidence) -> None:
    roi = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    rows = [MontageRow("Nodule 1: 8.2 mm solid", roi, [("#1 d=14", roi.T), ("#2 d=19", roi)])]
    montage = _strict_round_trip(build_key_image_montage(evidence, rows, UIDS, model=MODEL))
    assert montage.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert montage.StudyInstanceUID == "1.2.3" and montage.PhotometricInterpretation == "RGB"
    pixels = montage.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 10


def test_each_nodule_has_a_region_on_its_centre_slice_for_viewers() -> None:
    evidence = sr_evidence()
    findings, similar, priors = sr_inputs()
    sr = _strict_round_trip(build_similarity_sr(evidence, findings, similar, priors, MODEL, UIDS))
    regions = [i for i in _content_items(sr) if i.ValueType == "SCOORD"]
    assert [r.GraphicType for r in regions] == ["CIRCLE", "CIRCLE"]
    by_uid = {ds.SOPInstanceUID: ds for ds in evidence}
    for finding, region in zip(findings, regions, strict=True):
        (image,) = region.ContentSequence  # SELECTED FROM the slice through the centre
        referenced = image.ReferencedSOPSequence[0]
        ds = by_uid[referenced.ReferencedSOPInstanceUID]
        assert referenced.ReferencedSOPClassUID == ds.SOPClassUID
        assert abs(float(ds.ImagePositionPatient[2]) - finding.center_xyz[2]) <= 1.25 / 2
        # The circle's centre maps back to the nodule's centre (within half a pixel),
        # its radius is half the diameter (at least one pixel).
        x, y, edge_x, _ = (float(v) for v in region.GraphicData)
        world_x = float(ds.ImagePositionPatient[0]) + (x - 0.5) * float(ds.PixelSpacing[1])
        world_y = float(ds.ImagePositionPatient[1]) + (y - 0.5) * float(ds.PixelSpacing[0])
        assert (
            abs(world_x - finding.center_xyz[0]) <= 2.5
            and abs(world_y - finding.center_xyz[1]) <= 2.5
        )
        assert (edge_x - x) * 5.0 == pytest.approx(max(finding.diameter_mm / 2, 5.0))
    # The planar group tracks the same lesion as the volumetric one.
    tracking = [i.UID for i in _items(sr, "Tracking Unique Identifier")]
    assert tracking == [f.tracking_uid for f in findings for _ in (0, 1)]
    # Every image the SR references is a slice of its own CT series.
    images = [i for i in _content_items(sr) if i.ValueType == "IMAGE"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images} <= set(by_uid)


def test_no_region_when_the_centre_is_outside_the_series() -> None:
    findings, similar, priors = sr_inputs()
    few = sr_evidence(3)  # z 0 .. -2.5 mm: both centres are far below
    sr = build_similarity_sr(few, findings, similar, priors, MODEL, UIDS)
    assert not [i for i in _content_items(sr) if i.ValueType == "SCOORD"]
    assert len(_items(sr, "Tracking Identifier")) == 2


@pytest.mark.parametrize(("rows", "matches"), [(1, 0), (1, 1), (1, 10), (3, 4), (8, 10)])
def test_montage_layout_never_overlaps(rows: int, matches: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dicom_node.results.montage import montage_figure

    roi = np.zeros((64, 64), np.uint8)
    caption = "#10 d=0.123\n12.5 mm 2024-01-01 a caption long enough to be wrapped and cut"
    figure = montage_figure(
        [
            MontageRow(f"Nodule {r}\n12.3 mm part-solid", roi, [(caption, roi)] * matches)
            for r in range(rows)
        ],
        "Similar prior cases of other patients, model hn-0123456789abcdef. " * 3,
    )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in figure.texts]
    boxes += [a.get_window_extent(renderer) for a in figure.axes]
    assert len(figure.axes) == rows * (1 + matches)
    whole = figure.bbox
    for i, box in enumerate(boxes):
        assert (
            whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
        )
        for other in boxes[i + 1 :]:
            assert not box.overlaps(other), (box, other)


def test_result_uids_are_derived_from_their_inputs_in_any_process() -> None:
    """Same study, version, kind and revision: same UID (a restart makes the same object)."""
    import subprocess
    import sys

    from dicom_node.results.identity import result_series_uid, result_sop_instance_uid
    from storage.catalog import ResultKind
    from storage.uids import is_valid_uid

    sr, montage = ResultKind.SIMILARITY_SR, ResultKind.KEY_IMAGES
    uids = [
        result_series_uid("1.2.3", "v1", sr),
        result_series_uid("1.2.3", "v1", montage),
        result_series_uid("1.2.3", "v2", sr),
        result_series_uid("1.2.4", "v1", sr),
        result_sop_instance_uid("1.2.3", "v1", sr, 1),
        result_sop_instance_uid("1.2.3", "v1", sr, 2),
        result_sop_instance_uid("1.2.3", "v1", montage, 1),
    ]
    assert len(set(uids)) == len(uids)
    assert all(uid.startswith("2.25.") and is_valid_uid(uid) for uid in uids)
    again = subprocess.run(
        [sys.executable, "-c", "from dicom_node.results.identity import result_sop_instance_uid;"
         "from storage.catalog import ResultKind;"
         "print(result_sop_instance_uid('1.2.3', 'v1', ResultKind.SIMILARITY_SR, 2))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert again.stdout.strip() == uids[5]
    with pytest.raises(ValueError, match="revisions start at 1"):
        result_sop_instance_uid("1.2.3", "v1", sr, 0)
