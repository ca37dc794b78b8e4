"""The analysis of a thin-slice series without full-size temporaries: the same
values as before, in less memory.

Covers: the density weighting applied in place equals the product with density_excess; regions
labelled within the lungs' box equal those of the whole volume (labels, boxes, peaks), and the
labelling's traced peak scales with the lungs' box, not the series; a series read ``compact`` is
int16 with the float32 reader's values, and float32 when the rescale is not whole. No timings.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from model.inference import localise
from model.inference.io import load_series
from model.phantoms.writer import write_phantom_series
from tests.harness import synthetic


def _series(shape: tuple[int, int, int] = (40, 64, 64)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, lungs (a box away from every edge) and a heatmap with three blobs and some noise."""
    rng = np.random.default_rng(3)
    hu = rng.normal(-850.0, 30.0, shape).astype(np.float32)
    lung = np.zeros(shape, bool)
    lung[6:34, 10:50, 12:54] = True
    heat = np.zeros(shape, np.float32)
    for z, y, x, r in ((12, 20, 20, 4), (25, 40, 45, 5), (30, 15, 50, 2)):
        zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
        blob = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        heat[blob] = rng.uniform(0.6, 1.0)
        hu[blob] = -450.0
    heat += rng.uniform(0.0, 0.3, shape).astype(np.float32)
    return hu, lung, heat


def test_density_weighting_in_place_equals_the_product() -> None:
    hu, lung, heat = _series()
    expected = heat * localise.density_excess(hu, lung)
    out = localise.weight_by_density(heat.copy(), hu, lung)
    np.testing.assert_array_equal(out, expected)
    compact = localise.weight_by_density(heat.copy(), hu.round().astype(np.int16), lung)
    np.testing.assert_array_equal(compact, heat * localise.density_excess(hu.round(), lung))


def _whole_volume_regions(heat: np.ndarray, lung: np.ndarray, grow: np.ndarray | None) -> np.ndarray:
    """The labelling of main before the lungs' box: components over the whole volume."""
    fg = (heat >= 0.5) & lung
    grown = fg | (grow & lung) if grow is not None else fg
    raw, _ = ndimage.label(grown, structure=np.ones((3, 3, 3), dtype=bool))
    return raw


def test_regions_in_the_lungs_box_are_those_of_the_whole_volume() -> None:
    hu, lung, heat = _series()
    grow = hu >= -500.0
    labels, regions = localise.find_regions(heat, lung, (1.0, 0.7, 0.7), 0.5, min_volume_ml=0.01, grow_into=grow)
    assert len(regions) >= 2 and labels.shape == heat.shape
    raw = _whole_volume_regions(heat, lung, grow)
    for region in regions:
        where = labels == region.index
        # Each region is one whole-volume component, and its box and peak are in series coordinates.
        assert len(set(raw[where].tolist())) == 1 and np.count_nonzero(raw == raw[where][0]) == where.sum()
        z, y, x = np.nonzero(where)
        assert region.bbox == (z.min(), y.min(), x.min(), z.max(), y.max(), x.max())
        assert where[region.peak] and heat[region.peak] == region.max_score
    assert not labels[~lung].any()


def test_labelling_peak_scales_with_the_lungs_box() -> None:
    """Lungs in an eighth of the volume: the labelling's traced peak (beyond the uint16 labels it
    returns) is a fraction of the int32 labels of the whole volume it used to hold."""
    shape = (64, 128, 128)
    heat = np.zeros(shape, np.float32)
    lung = np.zeros(shape, bool)
    lung[16:48, 32:96, 32:96] = True
    heat[20:30, 40:60, 40:60] = 0.9
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        labels, regions = localise.find_regions(heat, lung, (1.0, 1.0, 1.0), 0.5)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(regions) == 1
    whole_int32 = heat.size * 4
    assert peak < labels.nbytes + 0.4 * whole_int32, (peak, labels.nbytes, whole_int32)


def test_a_compact_series_is_int16_with_the_same_values(tmp_path: Path) -> None:
    series = synthetic.write_series(synthetic.make_test_phantom(), tmp_path / "ct")
    floats = load_series(series.paths)
    compact = load_series(series.paths, compact=True)
    assert floats.hu.dtype == np.float32 and compact.hu.dtype == np.int16
    np.testing.assert_array_equal(compact.hu, floats.hu)
    # A rescale slope that makes fractions: float32, as without ``compact``.
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = 0.5
        ds.save_as(path)
    halves = load_series(series.paths, compact=True)
    assert halves.hu.dtype == np.float32
    np.testing.assert_array_equal(halves.hu, load_series(series.paths).hu)


@pytest.mark.parametrize("syntax", ["explicit", "rle", "deflate"])
def test_an_enhanced_ct_is_decoded_frame_by_frame(tmp_path: Path, syntax: str) -> None:
    """A multi-frame file's frames decoded one at a time: besides the volume itself, the read
    holds a few frames, not the file's whole pixel data and a whole decoded copy (three volumes
    at once: 1.5 GB for a 1,000-frame Enhanced CT of 512 x 512). A deflated file, which pydicom
    cannot read frame by frame, is decoded whole: the same values, the old peak."""
    phantom = synthetic.make_test_phantom(slices=48, size=128)
    folder = write_phantom_series(
        phantom,
        tmp_path / "mf",
        multiframe=True,
        transfer_syntax=syntax,
        reverse_instance_numbers=True,
        write_masks=False,
    )
    singles = write_phantom_series(phantom, tmp_path / "sf", write_masks=False)
    tracemalloc.start()
    try:
        volume = load_series(folder, compact=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(volume.hu, load_series(singles, compact=True).hu)
    assert volume.hu.dtype == np.int16
    if syntax != "deflate":
        assert peak < 1.5 * volume.hu.nbytes, (peak, volume.hu.nbytes)
