"""The similar-case Structured Report: a pure function over findings and matches.

Comprehensive 3D SR with a TID 1500 Measurement Report in the index study,
built with highdicom (never by hand). One TID 1411 volumetric measurement
group per nodule: tracking identifier and UID, finding (nodule) and finding
site (lung, laterality), a POINT volume surface (SCOORD3D) at the centre in
the CT's frame of reference, long-axis and equivalent diameters, volume, mean
attenuation, texture, the probability that it is a nodule (the
false-positive reduction network's), algorithm identification (TID 4019). Beside it, a TID
1410 planar group with the same tracking identifier and UID holds the image
region: a CIRCLE (SCOORD) of the nodule's diameter on the CT slice through
its centre, referencing that slice, which OHIF-style viewers draw on the
image (they merge groups by tracking UID; TID 1411 allows a volume surface
or image regions, not both, hence two groups). Appended to each volumetric
group, two containers of private concepts (coding scheme ``99DCMNODE``,
declared in the CodingSchemeIdentificationSequence):

- "Similar prior cases (other patients)": per match its rank, the embedding
  distance that ranks it, the joint Hamming distance of its codes (the coarse
  search), the code layer that drove the match, the matched nodule's size,
  size class and texture, the matched study's UID and date and the patient
  label the caller's privacy policy allows. No image or series references
  cross patients: only UIDREF, DATE, TEXT, NUM and CODE items (the one image
  the SR references is a slice of its own CT series).
- "Same patient: earlier measurements": the same lesion in the patient's
  earlier studies (matched after registering the prior to this scan), with
  its diameter and volume, the growth of the diameter in mm and %, of the
  volume in %, and the volume doubling time in days when the interval is known.

UIDs are passed in, so the same input gives the same document.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ai.classes import TEXTURES
from ai.hashing.codes import LAYERS

__all__ = [
    "CODING_SCHEME",
    "ModelInfo",
    "NoduleFinding",
    "PriorMeasurement",
    "ReportUIDs",
    "SimilarCase",
    "build_similarity_sr",
]

CODING_SCHEME = "99DCMNODE"
"""Coding scheme designator of our private concepts."""


def _private(value: str, meaning: str) -> Code:
    return Code(value, CODING_SCHEME, meaning)


SIMILAR_CASES = _private("SIMILAR-CASES", "Similar prior cases (other patients)")
SIMILAR_CASE = _private("SIMILAR-CASE", "Similar case")
SAME_PATIENT = _private("SAME-PATIENT-PRIORS", "Same patient: earlier measurements")
PRIOR = _private("PRIOR-MEASUREMENT", "Earlier measurement")
RANK = _private("RANK", "Rank")
JOINT_DISTANCE = _private("JOINT-HAMMING", "Joint Hamming distance")
RANKING_DISTANCE = _private("EMBEDDING-DISTANCE", "Embedding distance (ranks the cases)")
CODE_LAYER = _private("CODE-LAYER", "Code layer that drove the match")
SIZE_CLASS = _private("SIZE-CLASS", "Nodule size class")
TEXTURE = _private("NODULE-TEXTURE", "Nodule texture")
MATCHED_PATIENT = _private("MATCHED-PATIENT", "Matched patient")
GROWTH = _private("DIAMETER-CHANGE", "Diameter change")
GROWTH_PERCENT = _private("DIAMETER-CHANGE-PERCENT", "Diameter change, percent")
EQUIVALENT_DIAMETER = _private("EQUIVALENT-DIAMETER", "Volume-equivalent diameter")
NODULE_PROBABILITY = _private("NODULE-PROBABILITY", "Probability of a nodule")
VOLUME_CHANGE_PERCENT = _private("VOLUME-CHANGE-PERCENT", "Volume change, percent")
VOLUME_DOUBLING_TIME = _private("VOLUME-DOUBLING-TIME", "Volume doubling time")
#: The texture vocabulary of ``ai.classes.TEXTURES``, coded.
TEXTURE_CODES = dict(
    zip(
        TEXTURES,
        (
            _private("SOLID", "Solid nodule"),
            _private("PART-SOLID", "Part-solid nodule"),
            codes.DCM.GroundGlassOpacity,
        ),
        strict=True,
    )
)
#: The hash layers of ``ai.hashing.codes.LAYERS``, coded.
LAYER_CODES = dict(
    zip(
        LAYERS,
        (
            _private("SHALLOW", "Shallow layer (contour)"),
            _private("MIDDLE", "Middle layer (semantics)"),
            _private("DEEP", "Deep layer (size and shape)"),
        ),
        strict=True,
    )
)
LATERALITY = {"right": codes.SCT.Right, "left": codes.SCT.Left}
CT_CHEST = Code("24627-2", "LN", "CT Chest")
UNITLESS = Code("1", "UCUM", "no units")
BITS = Code("bit", "UCUM", "bit")
DAYS = Code("d", "UCUM", "day")


@dataclass(frozen=True)
class ModelInfo:
    """The hashing model, from its model card."""

    name: str
    version: str
    """Version id of the weights (changes whenever the weights change)."""
    manufacturer: str = "dicom-node"
    parameters: tuple[str, ...] = ()
    """Algorithm Parameters of TID 4019: what else decided the findings (the
    false-positive reduction model's version, its operating point, the
    smallest diameter reported)."""


@dataclass(frozen=True)
class ReportUIDs:
    """UIDs of one generated object, made by the caller."""

    series_instance_uid: str
    sop_instance_uid: str
    device_observer_uid: str
    """Changes whenever the model's weights change (IHE AIR)."""


@dataclass(frozen=True)
class NoduleFinding:
    """One detected nodule of the index series."""

    tracking_uid: str
    tracking_id: str
    center_xyz: tuple[float, float, float]
    """World LPS mm, in the CT's frame of reference."""
    diameter_mm: float
    """Volume-equivalent diameter."""
    long_axis_mm: float
    volume_mm3: float
    mean_hu: float
    texture: str
    """``solid``, ``part-solid`` or ``ground-glass``."""
    laterality: str
    """``right`` or ``left`` (the patient's)."""
    probability: float | None = None
    """Probability that it is a nodule (false-positive reduction network), 0..1."""
    series_instance_uid: str | None = None
    """The CT series it was found in; None: the evidence's only series."""


@dataclass(frozen=True)
class SimilarCase:
    """A similar nodule of another patient."""

    rank: int
    distance: float
    driving_layer: str
    diameter_mm: float
    size_class: int
    texture: str
    study_instance_uid: str
    study_date: str | None
    patient_label: str
    """Identity or de-identified case id, as the privacy policy allows."""
    embedding_distance: float | None = None
    """Distance of the float embeddings: the one that ranks the cases."""


@dataclass(frozen=True)
class PriorMeasurement:
    """The same lesion in an earlier study of the same patient."""

    study_instance_uid: str
    study_date: str | None
    diameter_mm: float
    growth_mm: float
    growth_percent: float
    volume_mm3: float | None = None
    volume_change_percent: float | None = None
    volume_doubling_days: float | None = None
    """Negative when the nodule shrank; None without the interval or a volume change."""


def _num(name: Code, value: float, unit: Code) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(
        name=name, value=float(value), unit=unit, relationship_type="CONTAINS"
    )


def _optional_num(name: Code, value: float | None, unit: Code) -> list[hd.sr.ContentItem]:
    return [] if value is None else [_num(name, value, unit)]


def _container(name: Code, items: Sequence[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=name, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _date_items(study_date: str | None) -> list[hd.sr.ContentItem]:
    if not study_date:
        return []
    try:
        value = datetime.datetime.strptime(study_date, "%Y%m%d").date()
    except ValueError:
        return []
    return [
        hd.sr.DateContentItem(name=codes.DCM.StudyDate, value=value, relationship_type="CONTAINS")
    ]


def _similar_container(cases: Sequence[SimilarCase]) -> hd.sr.ContainerContentItem:
    items = []
    for case in cases:
        items.append(
            _container(
                SIMILAR_CASE,
                [
                    _num(RANK, case.rank, UNITLESS),
                    *(
                        [_num(RANKING_DISTANCE, case.embedding_distance, UNITLESS)]
                        if case.embedding_distance is not None
                        else []
                    ),
                    _num(JOINT_DISTANCE, case.distance, BITS),
                    hd.sr.CodeContentItem(
                        name=CODE_LAYER,
                        value=LAYER_CODES[case.driving_layer],
                        relationship_type="CONTAINS",
                    ),
                    _num(codes.SCT.Diameter, case.diameter_mm, codes.UCUM.Millimeter),
                    _num(SIZE_CLASS, case.size_class, UNITLESS),
                    hd.sr.CodeContentItem(
                        name=TEXTURE,
                        value=TEXTURE_CODES[case.texture],
                        relationship_type="CONTAINS",
                    ),
                    hd.sr.UIDRefContentItem(
                        name=codes.DCM.StudyInstanceUID,
                        value=case.study_instance_uid,
                        relationship_type="CONTAINS",
                    ),
                    *_date_items(case.study_date),
                    hd.sr.TextContentItem(
                        name=MATCHED_PATIENT,
                        value=case.patient_label or "unknown",
                        relationship_type="CONTAINS",
                    ),
                ],
            )
        )
    return _container(SIMILAR_CASES, items)


def _priors_container(priors: Sequence[PriorMeasurement]) -> hd.sr.ContainerContentItem:
    items = [
        _container(
            PRIOR,
            [
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.StudyInstanceUID,
                    value=prior.study_instance_uid,
                    relationship_type="CONTAINS",
                ),
                *_date_items(prior.study_date),
                _num(EQUIVALENT_DIAMETER, prior.diameter_mm, codes.UCUM.Millimeter),
                _num(GROWTH, prior.growth_mm, codes.UCUM.Millimeter),
                _num(GROWTH_PERCENT, prior.growth_percent, codes.UCUM.Percent),
                *_optional_num(codes.SCT.Volume, prior.volume_mm3, codes.UCUM.CubicMillimeter),
                *_optional_num(
                    VOLUME_CHANGE_PERCENT, prior.volume_change_percent, codes.UCUM.Percent
                ),
                *_optional_num(VOLUME_DOUBLING_TIME, prior.volume_doubling_days, DAYS),
            ],
        )
        for prior in priors
    ]
    return _container(SAME_PATIENT, items)


def _centre_region(
    evidence: Sequence[Dataset], centre_xyz: tuple[float, float, float], diameter_mm: float
) -> hd.sr.ImageRegion | None:
    """A CIRCLE of the nodule's diameter on the CT slice nearest its centre, or None.

    None when no slice has usable geometry, the nearest one is farther from
    the centre than its thickness, or the centre falls outside the image.
    Graphic data are (column, row) with the top left corner of the image at
    0\\0, so pixel ``i`` is centred at ``i + 0.5`` (PS3.3 C.18.6.1.1).
    """
    centre = np.asarray(centre_xyz, dtype=np.float64)
    nearest: tuple[float, Dataset, float, float, float] | None = None
    for ds in evidence:
        try:
            origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
            orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
            row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        except (AttributeError, TypeError, ValueError):
            continue
        along_row, along_column = orientation[:3], orientation[3:]
        offset = centre - origin
        distance = abs(float(offset @ np.cross(along_row, along_column)))
        if nearest is None or distance < nearest[0]:
            column = float(offset @ along_row) / column_spacing
            row = float(offset @ along_column) / row_spacing
            nearest = (distance, ds, column, row, column_spacing)
    if nearest is None:
        return None
    distance, ds, column, row, column_spacing = nearest
    thickness = float(ds.get("SliceThickness") or 0.0) or column_spacing
    inside = 0 <= column < int(ds.Columns) and 0 <= row < int(ds.Rows)
    if distance > thickness or not inside:
        return None
    x, y = column + 0.5, row + 0.5
    radius = max(diameter_mm / 2 / column_spacing, 1.0)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[x, y], [x + radius, y]], dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID),
        ),
    )


def _tracking(finding: NoduleFinding) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id)


def _sites(finding: NoduleFinding) -> list[hd.sr.FindingSite]:
    return [
        hd.sr.FindingSite(
            anatomic_location=codes.SCT.Lung, laterality=LATERALITY[finding.laterality]
        )
    ]


def _planar_group(
    finding: NoduleFinding, region: hd.sr.ImageRegion, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the nodule's region on its centre slice, tracked as the volumetric group."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(finding),
        referenced_region=region,
        finding_type=codes.SCT.Nodule,
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
    )


def _group(
    finding: NoduleFinding,
    frame_of_reference_uid: str,
    series_instance_uid: str,
    algorithm: hd.sr.AlgorithmIdentification,
    similar: Sequence[SimilarCase],
    priors: Sequence[PriorMeasurement],
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    surface = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_xyz], dtype=np.float64),
        frame_of_reference_uid=frame_of_reference_uid,
        source_series=hd.sr.SourceSeriesForSegmentation(series_instance_uid),
    )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(finding),
        referenced_volume_surface=surface,
        finding_type=codes.SCT.Nodule,
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.LongAxis, value=finding.long_axis_mm, unit=codes.UCUM.Millimeter
            ),
            hd.sr.Measurement(
                name=EQUIVALENT_DIAMETER, value=finding.diameter_mm, unit=codes.UCUM.Millimeter
            ),
            hd.sr.Measurement(
                name=codes.SCT.Volume, value=finding.volume_mm3, unit=codes.UCUM.CubicMillimeter
            ),
            hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient,
                value=finding.mean_hu,
                unit=codes.UCUM.HounsfieldUnit,
                derivation=codes.SCT.Mean,
            ),
            *(
                [
                    hd.sr.Measurement(
                        name=NODULE_PROBABILITY, value=finding.probability, unit=UNITLESS
                    )
                ]
                if finding.probability is not None
                else []
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=TEXTURE, value=TEXTURE_CODES[finding.texture])
        ],
    )
    content = group[0].ContentSequence
    if similar:  # an empty CONTAINER would have an empty ContentSequence (type 1C)
        content.append(_similar_container(similar))
    if priors:
        content.append(_priors_container(priors))
    return group


def _no_findings_group(
    uids: ReportUIDs, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group saying the algorithm ran and found no nodule (TID 1500 needs one group)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[uids.sop_instance_uid, "no nodule found"]),
            identifier="Lungs",
        ),
        finding_type=codes.SCT.Lung,
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.DCM.CADProcessingAndFindingsSummary,
                value=codes.DCM.AllAlgorithmsSucceededWithoutFindings,
            )
        ],
    )


def build_similarity_sr(
    evidence: Sequence[Dataset],
    findings: Sequence[NoduleFinding],
    similar: Mapping[str, Sequence[SimilarCase]],
    priors: Mapping[str, Sequence[PriorMeasurement]],
    model: ModelInfo,
    uids: ReportUIDs,
    *,
    series_number: int = 9001,
    instance_number: int = 1,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the similar-case SR of a study's CT series (see the module docstring).

    Parameters
    ----------
    evidence : sequence of pydicom.dataset.Dataset
        The datasets (headers suffice) of the study's analysed CT series;
        patient and study come from them.
    findings : sequence of NoduleFinding
        May be empty: the report then holds one TID 1501 group saying all
        algorithms succeeded without findings.
    similar, priors : mapping
        By ``tracking_uid``.
    model : ModelInfo
    uids : ReportUIDs
    series_number, instance_number : int
        The SR's; the instance number counts its revisions.
    predecessors : sequence of pydicom.dataset.Dataset
        Earlier versions this SR replaces (their Study, Series, SOP Instance
        and SOP Class UIDs), listed in the Predecessor Documents Sequence
        (PS3.3 C.17.2) so a PACS or viewer can tell the current one.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    ValueError
        Evidence missing or of several studies, a finding of a series not
        in the evidence (or without its series when the evidence has
        several), a texture, laterality or code layer not in the vocabularies above.
    """
    if not evidence:
        raise ValueError("the SR needs the CT series' datasets as evidence")
    if len({str(ds.StudyInstanceUID) for ds in evidence}) != 1:
        raise ValueError("the evidence must be of one study")
    frames = {str(ds.SeriesInstanceUID): str(ds.FrameOfReferenceUID) for ds in evidence}
    only_series = next(iter(frames)) if len(frames) == 1 else None
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version, parameters=list(model.parameters) or None
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_observer_uid,
            name=model.name,
            manufacturer_name=model.manufacturer,
            model_name=model.version,
        ),
    )
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for finding in findings:
        series_instance_uid = finding.series_instance_uid or only_series
        if series_instance_uid not in frames:
            raise ValueError(f"{finding.tracking_id}: its series is not in the evidence")
        groups.append(
            _group(
                finding,
                frames[series_instance_uid],
                series_instance_uid,
                algorithm,
                similar.get(finding.tracking_uid, ()),
                priors.get(finding.tracking_uid, ()),
            )
        )
        of_series = [ds for ds in evidence if str(ds.SeriesInstanceUID) == series_instance_uid]
        region = _centre_region(of_series, finding.center_xyz, finding.diameter_mm)
        if region is not None:
            groups.append(_planar_group(finding, region, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST,
        imaging_measurements=groups or [_no_findings_group(uids, algorithm)],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=model.manufacturer,
        series_description="Similar prior cases (dicom-node)",
        is_complete=True,
        previous_versions=list(predecessors) or None,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = "dicom-node private concepts"
    scheme.CodingSchemeResponsibleOrganization = "dicom-node"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr
