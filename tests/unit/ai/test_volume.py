"""ai.volume: DICOM series -> HU volume with true geometry, and every named bad series."""

from __future__ import annotations

import copy
import dataclasses
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ai.errors import (
    DuplicateSlices,
    EmptySeries,
    GantryTilt,
    LocalizerInSeries,
    MissingGeometry,
    MissingSlices,
    MixedImageSize,
    MixedOrientation,
    MixedSeries,
    NotCTSeries,
    PixelDecodeError,
    SeriesError,
    UnevenSpacing,
)
from ai.phantom import (
    TEST_GEOMETRY,
    identity_for,
    plan_patient,
    render_study,
    series_volume,
    study_datasets,
)
from ai.types import Volume
from ai.volume import from_sitk, load_series, resample, resample_like, to_sitk


@pytest.fixture(scope="module")
def plan():
    return plan_patient(11, 0, anatomy_scale=0.6)


@pytest.fixture(scope="module")
def pair(plan):
    """The same study with and without its nodules (identical noise)."""
    return render_study(plan, 0, TEST_GEOMETRY), render_study(
        plan, 0, TEST_GEOMETRY, with_nodules=False
    )


def _datasets(study, head_first: bool, syntax: str = "explicit") -> list[Dataset]:
    identity = identity_for(11, 0, 0, head_first=head_first)
    datasets = study_datasets(study, identity, transfer_syntax=syntax)
    random.Random(3).shuffle(datasets)  # sorting must not rely on the order handed in
    return datasets


def _intensity_centroids(with_nodules: Volume, without: Volume, nodules) -> list[float]:
    """World distance from each truth centre to the centroid of the nodule's own intensity."""
    spacing = np.asarray(with_nodules.spacing)
    errors = []
    for nodule in nodules:
        center = np.asarray(nodule.center_xyz)
        zyx = with_nodules.world_to_voxel(center)
        reach = nodule.diameter_mm * 0.5 + 4.0
        low = np.maximum(np.floor(zyx - reach / spacing).astype(int), 0)
        high = np.minimum(np.ceil(zyx + reach / spacing).astype(int) + 1, with_nodules.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        diff = with_nodules.array[box].astype(np.float64) - without.array[box].astype(np.float64)
        grid = np.stack(
            np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high, strict=True)), indexing="ij"),
            axis=-1,
        )
        near = np.sqrt((((grid - zyx) * spacing) ** 2).sum(axis=-1)) < reach
        weights = np.clip(diff, 0, None) * near
        centroid = (grid * weights[..., None]).reshape(-1, 3).sum(axis=0) / weights.sum()
        errors.append(float(np.linalg.norm(with_nodules.voxel_to_world(centroid) - center)))
    return errors


@pytest.mark.parametrize(
    ("head_first", "syntax"),
    [(True, "explicit"), (False, "explicit"), (True, "jpeg-ls"), (False, "jpeg2000")],
)
def test_truth_centre_lands_on_the_nodule_through_dicom(pair, head_first, syntax):
    study, bare = pair
    loaded = load_series(_datasets(study, head_first, syntax), spacing=None)
    loaded_bare = load_series(_datasets(bare, head_first, syntax), spacing=None)
    expected = series_volume(study.volume, head_first)
    assert np.array_equal(loaded.array, expected.array.astype(np.float32))
    assert np.allclose(loaded.origin, expected.origin, atol=1e-4)
    assert np.allclose(loaded.direction, expected.direction)
    assert np.allclose(loaded.spacing, study.volume.spacing)
    errors = _intensity_centroids(loaded, loaded_bare, study.nodules)
    assert max(errors) < 1.0, errors


def test_resampled_to_1mm_keeps_world_positions(pair):
    study, bare = pair
    loaded = load_series(_datasets(study, False))
    loaded_bare = load_series(_datasets(bare, False))
    assert loaded.spacing == (1.0, 1.0, 1.0)
    assert loaded.array.dtype == np.float32
    errors = _intensity_centroids(loaded, loaded_bare, study.nodules)
    assert max(errors) < 1.0, errors


def test_hu_uses_rescale_slope_and_intercept(pair):
    study, _ = pair
    datasets = _datasets(study, True)
    ds = datasets[0]
    reference = load_series(datasets, spacing=None)
    changed = copy.deepcopy(datasets)
    stored = changed[0].pixel_array.astype(np.int32)
    changed[0].RescaleSlope = "2"
    changed[0].RescaleIntercept = "-2048"
    changed[0].PixelData = ((stored + 1024) // 2 + 0).astype(np.uint16).tobytes()
    loaded = load_series(changed, spacing=None)
    k = int(
        np.argmin(
            [
                abs(float(d.ImagePositionPatient[2]) - float(ds.ImagePositionPatient[2]))
                for d in datasets
            ]
        )
    )
    index = int(round(reference.world_to_voxel([float(v) for v in ds.ImagePositionPatient])[0]))
    assert k == 0
    assert np.abs(loaded.array[index] - reference.array[index]).max() <= 2


def test_sitk_round_trip_and_mask_resampling(pair):
    study, _ = pair
    vol = series_volume(study.volume, False)
    back = from_sitk(to_sitk(vol))
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.direction, vol.direction) and np.allclose(back.origin, vol.origin)
    point = np.array([[3.0, 40.0, 70.0]])
    assert np.allclose(back.voxel_to_world(point), vol.voxel_to_world(point))
    mask = dataclasses.replace(study.volume, array=study.lung_mask)
    resampled = resample(study.volume, (1.0, 1.0, 1.0))
    on_grid = resample_like(series_volume(mask, False), resampled)
    assert on_grid.shape == resampled.shape and on_grid.array.dtype == np.uint8
    hu = resampled.array[on_grid.array > 0]
    assert np.median(hu) < -750
    with pytest.raises(ValueError):
        resample(vol, (0.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def tiny():
    """A 32 x 32 x 10 series for the error cases."""
    plan = plan_patient(2, 0, anatomy_scale=0.6, n_tracks=0, n_studies=1)
    geometry = dataclasses.replace(TEST_GEOMETRY, matrix=32, pixel_mm=10.0, slice_mm=5.0, slices=10)
    study = render_study(plan, 0, geometry)
    return study_datasets(study, identity_for(2, 0, 0, head_first=True))


def _shift(ds: Dataset, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> None:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [f"{x + dx:.4f}", f"{y + dy:.4f}", f"{z + dz:.4f}"]


def _by_z(datasets: list[Dataset]) -> list[Dataset]:
    return sorted(copy.deepcopy(datasets), key=lambda d: float(d.ImagePositionPatient[2]))


def _mixed_series(d):
    d[3].SeriesInstanceUID = "1.2.3.4"


def _localizer(d):
    d[4].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def _no_position(d):
    del d[2].ImagePositionPatient


def _mixed_orientation(d):
    d[2].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]


def _mixed_size(d):
    d[5].PixelSpacing = ["9", "9"]


def _tilt_tag(d):
    for ds in d:
        ds.GantryDetectorTilt = "15"


def _tilt_sheared(d):
    for k, ds in enumerate(d):
        _shift(ds, dy=k * 5.0 * np.tan(np.radians(12)))


def _duplicate(d):
    d.append(copy.deepcopy(d[4]))


def _missing(d):
    del d[5]


def _uneven(d):
    _shift(d[5], dz=2.0)


def _mr(d):
    d[0].Modality = "MR"


def _corrupt(d):
    d[3].PixelData = d[3].PixelData[:100]


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (_mixed_series, MixedSeries),
        (_localizer, LocalizerInSeries),
        (_no_position, MissingGeometry),
        (_mixed_orientation, MixedOrientation),
        (_mixed_size, MixedImageSize),
        (_tilt_tag, GantryTilt),
        (_tilt_sheared, GantryTilt),
        (_duplicate, DuplicateSlices),
        (_missing, MissingSlices),
        (_uneven, UnevenSpacing),
        (_mr, NotCTSeries),
        (_corrupt, PixelDecodeError),
    ],
)
def test_each_bad_series_has_its_own_error(tiny, damage, error):
    datasets = _by_z(tiny)
    assert load_series(datasets, spacing=None).shape == (10, 32, 32)
    damage(datasets)
    with pytest.raises(error):
        load_series(datasets, spacing=None)
    assert issubclass(error, SeriesError)


def test_empty_and_non_dicom_sources(tmp_path):
    with pytest.raises(EmptySeries):
        load_series([])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    with pytest.raises(NotCTSeries):
        load_series([junk])


def test_paths_and_datasets_give_the_same_volume(tiny, tmp_path):
    paths = []
    for ds in tiny:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    from_files = load_series(paths, spacing=None)
    from_memory = load_series(tiny, spacing=None)
    assert np.array_equal(from_files.array, from_memory.array)
    assert from_files.origin == from_memory.origin


SHARED_TOTALSEG = (
    Path(__file__).resolve().parents[4] / "shared" / "data" / "totalseg-example-ct-dicom.tar.gz"
)


@pytest.mark.skipif(not SHARED_TOTALSEG.exists(), reason="shared/data sample not present")
def test_real_jpeg2000_series_with_empty_uids(tmp_path):
    with tarfile.open(SHARED_TOTALSEG) as archive:
        archive.extractall(tmp_path, filter="data")
    files = [p for p in tmp_path.rglob("CT.*") if p.is_file()]
    volume = load_series(files, spacing=None)
    assert volume.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.array.min() == -1024 and volume.array.max() > 1000  # air and bone in HU
