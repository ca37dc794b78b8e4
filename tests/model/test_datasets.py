"""model.training.datasets and model.inference.preprocess: the three data layouts, the slice cache, pre-processing.

Covers: label aliases; the DICOM + labels.csv layout (phantom data set) through the cache, that
cached slices equal the inference path's (load_series -> segment_lungs -> prepare_lung_slices),
that the cache is used the second time and keyed by the input spec, and evaluation items with
lesion masks and true involvement; the NIfTI layout (both stored orientations read back to the
phantom's HU); the CC-CCII layout (classes, patients, numeric slice order, JPEG and PNG);
labels.csv errors; the input specs: the paper's (window, resize, z-score, square padding and its
inverse), the legacy masking, and the CPU recipe's (lung crop, lung-median fill, window scaling)
with its inverse geometry; the spec's JSON round trip and the old metadata form. Not covered: the
real public collections themselves (not shippable here): replicas generated from phantoms stand in for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.inference.io import load_series
from model.inference.lung import segment_lungs
from model.inference.preprocess import (
    LUNG_WINDOW,
    InputSpec,
    SliceGeometry,
    lung_slice_indices,
    prepare_lung_slices,
    prepare_slices,
    window_bounds,
)
from model.phantoms.dataset import write_phantom_dataset
from model.phantoms.phantom import make_phantom
from model.phantoms.writer import read_phantom_truth
from model.training import cache
from model.training.cache import prepare_dataset
from model.training.datasets import (
    CCCCII_CLASSES,
    discover,
    evaluation_items,
    load_volume,
    normalise_label,
)
from model.training.replicas import write_ccccii_replica, write_nifti_replica

SIZE = 64
SPEC = InputSpec(height=SIZE, width=SIZE)
LUNGS = InputSpec(height=64, width=96, crop="lungs", outside_lungs="lung_median", normalisation="window")


def _prep(hu: np.ndarray, spec: InputSpec | None = None, lung_mask: np.ndarray | None = None) -> np.ndarray:
    spec = spec or InputSpec(height=32, width=32)
    geometry = SliceGeometry.for_series(spec, hu.shape[1], hu.shape[2], lung_mask)
    return prepare_slices(hu, spec, geometry, lung_mask)


def test_label_aliases() -> None:
    for alias, label in {
        "NCP": "covid",
        "COVID-19": "covid",
        "cp": "cap",
        "CAP": "cap",
        "Normal": "normal",
        "NP": "normal",
        "non-pneumonia": "normal",
    }.items():
        assert normalise_label(alias) == label
    with pytest.raises(ValueError, match="flu"):
        normalise_label("flu")


@pytest.fixture(scope="module")
def dicom_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dicom-data")
    write_phantom_dataset(out, 3, seed=4, rows=96, slices_min=20, slices_max=24)
    return out


def test_dicom_layout_through_the_cache(dicom_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = discover(dicom_data)
    assert [(r.label, r.layout) for r in records] == [("covid", "dicom"), ("cap", "dicom"), ("normal", "dicom")]
    prepared = prepare_dataset(dicom_data, tmp_path / "cache", spec=LUNGS)
    assert not prepared.skipped and len(prepared.series) == 3
    for s, r in zip(prepared.series, records):
        assert (s.series_id, s.label, s.patient_id) == (r.series_id, r.label, r.patient_id)
        x = s.slices
        assert x.dtype == np.float32 and x.shape == (s.count, 1, 64, 96) and s.count >= 5
        # The same code path as inference.
        volume = load_series(r.source)
        mask = segment_lungs(volume.hu, volume.spacing, superior_last=volume.superior_last)
        idx = lung_slice_indices(mask)
        assert list(idx) == list(s.lung_indices)
        assert np.array_equal(
            np.asarray(x), prepare_lung_slices(volume.hu, mask, LUNGS, (volume.spacing[1], volume.spacing[2])).inputs
        )

    def must_not_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(cache, "load_volume", must_not_read)
    again = prepare_dataset(dicom_data, tmp_path / "cache", spec=LUNGS)
    assert [s.path for s in again.series] == [s.path for s in prepared.series]
    # Another input spec is another cache entry (the spec is in the key).
    monkeypatch.undo()
    other = prepare_dataset(dicom_data, tmp_path / "cache", spec=SPEC)
    assert {s.path for s in other.series}.isdisjoint({s.path for s in prepared.series})


def test_evaluation_items_carry_lesion_masks(dicom_data: Path) -> None:
    items = evaluation_items(dicom_data)
    assert [i.label for i in items] == ["covid", "cap", "normal"]
    covid = items[0]
    lesion = covid.lesion_mask()
    assert lesion.any() and np.array_equal(lesion, read_phantom_truth(covid.source).lesion_mask)
    assert lesion.shape == load_volume(covid.source).shape


def test_nifti_layout(tmp_path: Path) -> None:
    labels = write_nifti_replica(tmp_path / "nii", 2, seed=0, rows=64, slices=20)
    records = discover(tmp_path / "nii", labels)
    assert [(r.layout, r.label) for r in records] == [("nifti", "covid"), ("nifti", "cap")]
    for i, r in enumerate(records):
        p = make_phantom(r.label, seed=i, rows=64, columns=64, slices=20)
        v = load_volume(r.source)
        assert np.array_equal(v.hu, np.rint(p.hu)), r.series_id  # both stored orientations
        assert v.spacing == pytest.approx(p.spacing, rel=1e-5)
    prepared = prepare_dataset(records, tmp_path / "cache", spec=SPEC)
    assert len(prepared.series) == 2 and prepared.series[0].slices.shape[1:] == (1, SIZE, SIZE)


def test_ccccii_layout(tmp_path: Path) -> None:
    root = write_ccccii_replica(tmp_path / "cc", 3, seed=1, rows=64, slices=20)
    records = discover(root)
    assert {r.label for r in records} == {"covid", "cap", "normal"}
    assert all(r.patient_id.split("/")[0] in CCCCII_CLASSES for r in records)
    low, high = window_bounds(LUNG_WINDOW)
    for r in records:
        i = int(r.series_id.split("/")[-1]) - 3000
        p = make_phantom(r.label, seed=1000 + i, rows=64, columns=64, slices=20)
        expected = np.rint((np.clip(p.hu, low, high) - low) / (high - low) * 255.0) * (high - low) / 255.0 + low
        if i % 2:
            expected = expected[::-1]  # written head -> feet: numeric order follows the files
        v = load_volume(r.source, "ccccii")
        png = next(r.source.iterdir()).suffix == ".png"
        error = float(np.abs(v.hu - expected).mean())
        assert error < (1e-3 if png else 15.0), (r.series_id, error)  # PNG exact, JPEG lossy
    prepared = prepare_dataset(root, tmp_path / "cache", spec=SPEC)
    assert len(prepared.series) == 3 and not prepared.skipped


def test_labels_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "labels.csv").write_text("series,label\na,flu\n")
    with pytest.raises(ValueError, match="labels.csv:2"):
        discover(tmp_path)
    (tmp_path / "labels.csv").write_text("series,label\n../outside,covid\n")
    with pytest.raises(ValueError, match="outside"):
        discover(tmp_path)
    (tmp_path / "labels.csv").write_text("name,class\na,covid\n")
    with pytest.raises(ValueError, match="series,label"):
        discover(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="no labels.csv"):
        discover(tmp_path / "other")


def test_unreadable_series_are_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "labels.csv").write_text("series,label,patient_id\nempty,covid,p1\n")
    prepared = prepare_dataset(tmp_path, tmp_path / "cache", spec=SPEC)
    assert not prepared.series and "no DICOM images" in prepared.skipped[0][1]
    with pytest.raises(Exception, match="no DICOM images"):
        prepare_dataset(tmp_path, tmp_path / "cache", spec=SPEC, skip_unreadable=False)


def test_masking_keeps_the_lungs_and_a_margin_only() -> None:
    hu = np.full((1, 64, 64), 40.0, np.float32)  # soft tissue everywhere ...
    hu[0, 20:40, 10:30] = -850.0  # ... around one lung
    hu[0, 50:60, 50:60] = 1000.0  # and bone far from it
    lung = hu < -320
    x = _prep(hu, InputSpec(height=32, width=32, outside_lungs="window_min"), lung)[0, 0]
    outside = x[30:, 25:]  # bone and tissue far from the lung: all the window minimum (one value)
    assert np.ptp(outside) == 0 and outside[0, 0] == x.min()
    inside = x[11:19, 6:14]
    assert np.ptp(inside) == 0 and inside[0, 0] > x.min()  # lung (-850 HU) above the minimum
    assert x[10 - 1, 15] > x[11, 15]  # the tissue at the lung's edge stays in view (the margin)
    assert np.allclose(x.mean(), 0.0, atol=1e-4) and np.isclose(x.std(), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="lung_mask shape"):
        _prep(hu, InputSpec(height=32, width=32, outside_lungs="window_min"), lung[:, :10])


def test_preprocess_window_resize_zscore() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-2000, 2000, (3, 100, 80)).astype(np.float32)
    x = _prep(hu)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert np.allclose(x.mean(axis=(1, 2, 3)), 0.0, atol=1e-4) and np.allclose(x.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    # Values beyond the window are clipped: shifting them further changes nothing.
    low, high = window_bounds()
    assert (low, high) == (-1350.0, 150.0)
    wider = np.where(hu > high, hu + 500, np.where(hu < low, hu - 500, hu))
    assert np.allclose(_prep(wider), x, atol=1e-5)
    assert not _prep(np.full((2, 40, 40), 30.0, np.float32)).any()  # uniform: zeros
    # Inverse geometry of the square padding and resize.
    maps = np.zeros((1, 32, 32), np.float32)
    maps[0, 16:, :] = 1.0  # lower half of the padded square
    back = SliceGeometry.for_series(InputSpec(height=32, width=32), 100, 80).to_original(maps)
    assert back.shape == (1, 100, 80)
    assert back[0, :40].max() < 0.1 and back[0, 60:].min() > 0.9


def test_lung_slice_indices() -> None:
    mask = np.zeros((6, 10, 10), bool)
    mask[1, :5, :5] = True  # 25 px
    mask[2, :1, :1] = True  # 1 px: below 5 % of the largest
    mask[3:5, :4, :4] = True
    assert list(lung_slice_indices(mask)) == [1, 3, 4]
    assert list(lung_slice_indices(mask, min_fraction=0.0)) == [1, 2, 3, 4]
    assert lung_slice_indices(np.zeros((3, 4, 4), bool)).size == 0


def test_lung_crop_fills_outside_with_the_lung_median_and_scales_the_window() -> None:
    hu = np.full((2, 100, 120), 40.0, np.float32)  # soft tissue ...
    hu[:, 30:70, 20:50] = -850.0  # ... two lungs, the box around them 40 x 80 (+ margin)
    hu[:, 30:70, 70:100] = -850.0
    hu[0, 40:50, 30:40] = -500.0  # a ground-glass patch in the first slice
    hu[:, 90:95, 5:10] = 1000.0  # bone outside the box
    lung = np.zeros(hu.shape, bool)
    lung[:, 30:70, 20:50] = lung[:, 30:70, 70:100] = True
    spec = InputSpec(
        height=32, width=64, crop="lungs", crop_margin_mm=2.0, outside_lungs="lung_median", normalisation="window"
    )
    prepared = prepare_lung_slices(hu, lung, spec, (1.0, 1.0), np.array([0, 1]))
    g = prepared.geometry
    assert g.box == (28, 72, 18, 102)  # the lungs' box over the series, 2 mm (2 px) around it
    x = prepared.inputs
    assert x.shape == (2, 1, 32, 64)
    lung_value = (-850.0 + 1350.0) / 1500.0 * 2 - 1  # the window mapped to [-1, 1]
    # The mediastinum between the lungs (40 HU) is set to the lung median: no bright band, no ring.
    assert np.allclose(x[1, 0, :, 28:36], lung_value, atol=1e-4)
    assert np.allclose(x[1, 0, 4:28, 4:20], lung_value, atol=1e-4)
    assert x[0].max() > lung_value + 0.3  # the patch stands out
    # The inverse geometry puts network maps back on the series' grid, zero outside the box.
    maps = np.zeros((1, 32, 64), np.float32)
    maps[0, :, :32] = 1.0  # the left half of the box: the first lung
    back = g.to_original(maps)
    assert back.shape == (1, 100, 120) and back[0, :28].max() == 0 and back[0, :, 103:].max() == 0
    assert back[0, 50, 30] > 0.9 and back[0, 50, 90] < 0.1
    assert g.mask_to_network(lung[:1])[0].mean() > 0.5
    with pytest.raises(ValueError, match="geometry"):
        prepare_slices(hu[:, :50], spec, g, lung[:, :50])


def test_input_spec_json_round_trip_and_old_metadata() -> None:
    spec = InputSpec(height=64, width=96, crop="lungs", outside_lungs="lung_median", normalisation="window")
    assert InputSpec.from_json(spec.to_json()) == spec
    # Weights from before the spec: square whole slices, z-score, masked with the window minimum.
    old = InputSpec.from_json(
        {
            "image_size": 96,
            "window": {"width": 1500, "level": -600},
            "outside_lungs": "window minimum beyond 2 network pixels",
        }
    )
    assert old == InputSpec(height=96, width=96, outside_lungs="window_min")
    assert InputSpec.from_json({"image_size": 224}) == InputSpec()
    for bad in ({"height": 50}, {"crop": "chest"}, {"outside_lungs": "zero"}, {"normalisation": "minmax"}):
        with pytest.raises(ValueError, match="input"):
            InputSpec(**bad)
