"""The secondary-capture overlays and the renderer behind them (also the admin's PNG preview).

Covers: one SC per lung slice (or per key slice) in source order at source size, references to the
source image and series, the CT's frame of reference and image plane on each, the attributes PACS
and de-identification tools rely on, lossless encoding (explicit little endian, RLE), and the
pixels: the lung-window background equals the CT (computed here from the HU values), colour only
where the heatmap is at or above the threshold, the label and colour bar only in their corners.
Not covered: validators (test_validators.py), multi-frame sources (test_multiframe.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions
from dicom_node.outputs.render import colormap_lut, label_lines, overlay_png, preview_png, render_overlay
from tests.outputs.conftest import CREATED, Case

THRESHOLD = OutputOptions().overlay_threshold


def lung_window(hu: np.ndarray) -> np.ndarray:
    """W1500/L-600, written out independently of the renderer."""
    return np.rint(np.clip((hu - (-600.0 - 750.0)) / 1500.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def in_corners(mask: np.ndarray) -> bool:
    """True if every set pixel is in the top-left label box or the bottom-right colour bar box."""
    rows, cols = mask.shape
    y, x = np.nonzero(mask)
    top_left = (x < 0.65 * cols) & (y < 0.40 * rows)
    bottom_right = (x >= 0.70 * cols) & (y >= 0.70 * rows)
    return bool(np.all(top_left | bottom_right))


def test_one_sc_per_lung_slice_in_source_order(covid: Case) -> None:
    scs = covid.outputs["sc"]
    lung = [i for i, flag in enumerate(covid.result.lung_slices) if flag]
    assert [sc.InstanceNumber - 1 for sc in scs] == lung
    for sc in scs:
        source = covid.source(sc.InstanceNumber - 1)
        assert sc.SOPClassUID == SecondaryCaptureImageStorage
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
        assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated, sc.PlanarConfiguration) == (
            "RGB",
            3,
            8,
            0,
        )
        assert sc.pixel_array.dtype == np.uint8 and sc.pixel_array.shape == (source.Rows, source.Columns, 3)


def test_references_to_source_image_and_series(covid: Case) -> None:
    for sc in covid.outputs["sc"]:
        index = sc.InstanceNumber - 1
        uid = covid.result.sop_instance_uids[index]
        source = covid.source(index)
        assert len(sc.SourceImageSequence) == 1
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
        assert sc.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        assert "ReferencedFrameNumber" not in sc.SourceImageSequence[0]
        (series,) = sc.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [uid]


def test_each_overlay_sits_on_its_ct_slice(covid: Case, multiframe: Case) -> None:
    """Frame of Reference UID and Image Plane of the source slice: viewers sync the overlays."""
    for case in (covid, multiframe):
        shown = [i for i, lung in enumerate(case.result.lung_slices) if lung]
        for sc, i in zip(case.outputs["sc"], shown):
            ct = case.source(i)
            assert sc.FrameOfReferenceUID == ct.FrameOfReferenceUID
            frame = case.series.frame_numbers[i]
            position = (
                ct.ImagePositionPatient
                if frame is None
                else ct.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
            )
            assert [float(v) for v in sc.ImagePositionPatient] == pytest.approx([float(v) for v in position])
            assert [float(v) for v in sc.ImageOrientationPatient] == pytest.approx([1, 0, 0, 0, 1, 0])
            assert float(sc.SliceThickness) > 0 and len(sc.PixelSpacing) == 2


def test_attributes(covid: Case) -> None:
    source = covid.source(0)
    for sc in covid.outputs["sc"]:
        assert sc.BurnedInAnnotation == "NO"
        assert sc.BodyPartExamined == "CHEST"
        assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert sc.ConversionType == "DI"
        assert sc.LossyImageCompression == "00"
        assert covid.result.model.name in sc.DerivationDescription and "W1500/L-600" in sc.DerivationDescription
        assert sc.SeriesDescription == "AI: COVID-CT heatmap NOT FOR DIAGNOSTIC USE"
        assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert list(sc.PatientOrientation) == ["L", "P"]
        assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_key_slice_setting(covid: Case) -> None:
    key = build_outputs(
        covid.result, covid.sources, kinds=["sc"], options=OutputOptions(sc_slices="key", created=CREATED)
    )["sc"]
    assert [sc.InstanceNumber - 1 for sc in key] == sorted(set(covid.result.key_slices))
    # The same slice gives the same object whichever slices are shown.
    lung_mode = {sc.SOPInstanceUID: sc for sc in covid.outputs["sc"]}
    for sc in key:
        assert sc.PixelData == lung_mode[sc.SOPInstanceUID].PixelData
        assert sc.InstanceNumber == lung_mode[sc.SOPInstanceUID].InstanceNumber


def test_background_is_the_ct_in_lung_window_and_colour_only_above_threshold(covid: Case) -> None:
    assert covid.result.heatmap is not None
    checked_transparent = 0
    for sc in covid.outputs["sc"]:
        index = sc.InstanceNumber - 1
        rgb = sc.pixel_array.astype(int)
        grey = lung_window(covid.hu[index]).astype(int)
        heat = covid.result.heatmap[index]
        changed = np.any(rgb != grey[:, :, None], axis=2)
        below = heat < THRESHOLD
        # Below the threshold the picture is the CT, except for the label and the colour bar ...
        assert in_corners(changed & below), f"slice {index}: pixels changed outside the corners"
        # ... and there are heatmap values below the threshold that are drawn transparent.
        checked_transparent += int(np.count_nonzero((heat > 0.05) & below & ~changed))
        above = ~below
        if above.any():
            coloured = np.ptp(rgb[above], axis=1) > 0
            assert coloured.mean() > 0.99, f"slice {index}: overlay missing above the threshold"
    assert checked_transparent > 0


def test_label_and_colour_bar_sit_in_their_corners(covid: Case) -> None:
    sc = covid.outputs["sc"][0]
    index = sc.InstanceNumber - 1
    rgb = sc.pixel_array
    grey = lung_window(covid.hu[index])
    rows, cols = grey.shape
    top_left = rgb[: int(0.4 * rows), : int(0.65 * cols)]
    assert np.all(top_left > 180, axis=2).sum() > 30  # white (anti-aliased) text of the label
    bottom_right = rgb[int(0.7 * rows) :, int(0.7 * cols) :].reshape(-1, 3).astype(int)
    inferno = {tuple(int(c) for c in colour) for colour in colormap_lut()[int(0.3 * 255) :]}
    assert sum(tuple(p) in inferno for p in bottom_right) > 30  # the colour bar


def test_normal_result_has_no_colour_outside_the_corners(normal: Case) -> None:
    for sc in normal.outputs["sc"]:
        grey = lung_window(normal.hu[sc.InstanceNumber - 1])
        assert in_corners(np.any(sc.pixel_array != grey[:, :, None], axis=2))


def test_rle_lossless_gives_the_same_pixels(covid: Case) -> None:
    rle = build_outputs(
        covid.result,
        covid.sources,
        kinds=["sc"],
        options=OutputOptions(sc_transfer_syntax_uid=str(RLELossless), created=CREATED),
    )["sc"]
    assert rle[0].file_meta.TransferSyntaxUID == RLELossless
    for compressed, plain in zip(rle[:3], covid.outputs["sc"][:3]):
        written = io.BytesIO()
        compressed.save_as(written, enforce_file_format=True)
        assert np.array_equal(compressed.pixel_array, plain.pixel_array)


def test_renderer_is_a_plain_function(covid: Case) -> None:
    assert covid.result.heatmap is not None
    index = covid.result.key_slices[0]
    lines = label_lines(covid.result)
    rgb = render_overlay(covid.hu[index], covid.result.heatmap[index], lines)
    assert rgb.dtype == np.uint8 and rgb.shape == (*covid.hu.shape[1:], 3)
    sc = next(sc for sc in covid.outputs["sc"] if sc.InstanceNumber == index + 1)
    assert np.array_equal(rgb, sc.pixel_array)
    without_heat = render_overlay(covid.hu[index], None, lines)
    assert in_corners(np.any(without_heat != lung_window(covid.hu[index])[:, :, None], axis=2))
    with pytest.raises(ValueError, match="shape"):
        render_overlay(covid.hu[index], covid.result.heatmap[index][:10], lines)


def test_png_preview_is_the_sc_picture(covid: Case) -> None:
    index = covid.result.key_slices[0]
    png = preview_png(covid.result, covid.hu, index)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    sc = next(sc for sc in covid.outputs["sc"] if sc.InstanceNumber == index + 1)
    assert np.array_equal(decoded, sc.pixel_array)
    assert covid.result.heatmap is not None
    assert overlay_png(covid.hu[index], covid.result.heatmap[index], label_lines(covid.result)) == png
    with pytest.raises(ValueError, match="outside"):
        preview_png(covid.result, covid.hu, len(covid.hu))


def test_label_text_and_colormap(covid: Case) -> None:
    lines = label_lines(covid.result, node_version="0.1.0")
    assert lines[0] == "AI: COVID-19 p=0.82"
    assert lines[1] == "COVID 0.82 CAP 0.12 normal 0.06"
    assert lines[2] == f"{covid.result.model.name} {covid.result.model.version} / node 0.1.0"
    assert lines[3] == "NOT FOR DIAGNOSTIC USE"
    expected = np.rint(colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(colormap_lut(), expected)


def test_large_matrix_keeps_the_label_in_its_corner(covid: Case) -> None:
    """512 x 512 (the usual CT matrix): the label and bar stay small and in their corners."""
    hu = np.full((512, 512), -850.0, dtype=np.float32)
    rgb = render_overlay(hu, np.zeros_like(hu), label_lines(covid.result))
    changed = np.any(rgb != lung_window(hu)[:, :, None], axis=2)
    assert in_corners(changed)
    assert changed.mean() < 0.12
