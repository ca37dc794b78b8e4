"""The joint heatmap as a Parametric Map (highdicom ``ParametricMap``): what viewers fuse on the CT.

One multi-frame instance in the CT's frame of reference, one frame per CT slice, each at its
slice's plane position and orientation and derived from it (Derivation Image Sequence), so a
viewer that places frames by position puts each one on its slice.

Frame order: ascending along the slice normal, cross(row direction, column direction) of the
CT's Image Orientation (Patient); feet to head for an axial head-first CT, whatever the CT's
instance numbers or file order. OHIF 3.13's Parametric Map loader copies the map's frames into
the CT volume by frame index, ignoring their positions, and builds that volume in exactly this
order (cornerstone's sortImageIdsAndGetSpacing); highdicom writes the frames the other way
round, so they are put in this order after it. Both kinds of viewer then show the heat on the
same slice.

Every CT slice has a frame, also those without a score, at the CT's matrix size: OHIF needs the
map's voxels to fill the CT volume one to one (it refuses another matrix size and copies frames
by index).

Pixels: the heatmap itself, 32-bit float in 0-1 (Float Pixel Data), in steps of 1/256 (the
colour maps that draw it have 256 colours), with an identity Real World Value Mapping (unit "1",
range 0-1) and a window over that range. OHIF 3.13 reads the stored values, not the mapping
(it multiplies them by 100 and windows 0-100), so they must be the 0-1 score: an integer map is
drawn all or nothing there. OHIF ignores the map's own window and draws it at W 100 / L 50 over
the score x 100 (the same 0-1 range) in its rainbow_2 colour map; ``dicom-node viewer`` adds
OHIF's colour bar beside it and keeps that window off the series opened after it
(dicom_node/viewer/ohif.py).

Size: the file is written in Deflated Explicit VR Little Endian (the one compression the standard
defines for float pixels). Outside the lungs the map is zero and in them it is smooth, so the
quantised map deflates to about 1 % of the CT's bytes (a dense map over the whole lungs to about
3 %) instead of twice the CT. The sender offers the peer that transfer syntax and falls back to
Explicit VR Little Endian for a peer that does not take it.

Memory: highdicom writes the header from a pixel array that takes no memory
(:class:`HeaderOnlyParametricMap` encodes no frames); the frames are quantised one at a time into
the Float Pixel Data, or, with ``OutputOptions.defer_map_pixels`` (the worker), only as the file
is written (dicom_node.storage.part10): for a 1,000-slice series no float copy of the volume at
all, where highdicom and pydicom's deflated writer held five or more.

Why float and no Palette Color LUT: highdicom allows a palette only with integer pixels, and an
integer Parametric Map with the palette highdicom writes (and the ICC profile and Stored Value
Color Range the palette asks for) is reported by dciodvfy 2022 as carrying palette attributes its
Image Pixel Description rules forbid; viewers colour a map themselves (OHIF with its own colour
map), and the SC overlays carry the colours and a colour bar for PACS that only show pictures.

Thin-slice series: the map is what OHIF needs, one float frame per CT slice at the CT's matrix,
and a PACS stores it inflated: twice the CT's bytes (1 GB for 1,000 slices of 512x512), seconds of
encoding in the worker and more in the PACS. A series of more slices (frames) than
``worker.parametric_map_max_slices`` gets none (:func:`left_out` says when and why; the worker
then does not build it); its heatmap reaches viewers through the SC overlays and the SEG.

Body Part Examined CHEST, content qualification RESEARCH, the model's algorithm as contributing
equipment. A result without a heatmap (``no_decision``) gets no Parametric Map. A multi-frame
source: the frames derive from that instance's frames. Not for clinical use.
"""

from __future__ import annotations

from typing import Iterator

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.outputs import codes
from dicom_node.outputs.common import (
    MAP_TRANSFER_SYNTAX_UID,
    BuildContext,
    SliceRef,
    pixel_spacing,
    slice_orientation,
    slice_position,
    stamp,
)
from dicom_node.storage.part10 import DeferredPixels, defer_pixels
from model.contract.result import SeriesResult
from model.inference.io import slice_normal

LUT_LABEL = "AI_SCORE"
# The map's values are multiples of 1/LEVELS: what a colour map shows, and what deflates well.
LEVELS = 256


def left_out(result: SeriesResult, max_slices: int | None) -> str | None:
    """Why the map of ``result`` is not built, for people (the log, the job's result, an event):
    a series of more slices (frames) than ``max_slices`` (``worker.parametric_map_max_slices``;
    None: no limit). None when it is built, or when the result has no heatmap (no map either way)."""
    slices = len(result.sop_instance_uids)
    if result.heatmap is None or max_slices is None or slices <= max_slices:
        return None
    return (
        f"parametric map left out: {slices} slices, over worker.parametric_map_max_slices = {max_slices} "
        "(the heatmap overlays and the SEG are sent; raise the limit, or set it to null, to send the map too)"
    )


def quantised_scores(heatmap: np.ndarray) -> np.ndarray:
    """The heatmap as the map stores it: float32 in 0-1, NaN as 0, in steps of 1/LEVELS."""
    scores = np.empty(heatmap.shape, dtype=np.float32)
    for i in range(heatmap.shape[0]):
        _quantise_into(scores[i], heatmap[i])
    return scores


def _quantise_into(out: np.ndarray, heat: np.ndarray) -> None:
    """One slice of :func:`quantised_scores`, written into ``out`` (float32)."""
    np.copyto(out, heat, casting="unsafe")
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    np.multiply(out, LEVELS, out=out)
    np.rint(out, out=out)
    np.divide(out, LEVELS, out=out)


class HeaderOnlyParametricMap(hd.pm.ParametricMap):
    """highdicom's Parametric Map without its frames encoded: every attribute as highdicom makes
    it from a pixel array of the map's shape, and empty Float Pixel Data for the caller to fill."""

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        return b""


def _real_world_value_mapping(ctx: BuildContext) -> hd.pm.RealWorldValueMapping:
    model = ctx.result.model
    return hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=f"Suspected-infection score (0-1) of {model.name} {model.version}"[:64],
        unit=codes.UNITLESS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )


def _plane_geometry(
    ctx: BuildContext, slices: list[SliceRef]
) -> tuple[hd.PixelMeasuresSequence, hd.PlaneOrientationSequence, list[hd.PlanePositionSequence]]:
    """Pixel spacing, orientation and one position per frame, from the source slices (so that
    single-frame and multi-frame sources are handled alike)."""
    first = slices[0]
    spacing = pixel_spacing(first)
    if spacing is None:
        raise ValueError("the source has no Pixel Spacing: the Parametric Map cannot be placed on it")
    thickness = first.dataset.get("SliceThickness")
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=spacing[:2], slice_thickness=float(thickness) if thickness else None
    )
    orientation = hd.PlaneOrientationSequence(coordinate_system="PATIENT", image_orientation=slice_orientation(first))
    positions = []
    for s in slices:
        position = slice_position(s)
        if position is None:
            raise ValueError(
                f"slice {s.index} has no Image Position (Patient): the Parametric Map cannot be placed on it"
            )
        positions.append(hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=position))
    return measures, orientation, positions


def build_pm(ctx: BuildContext) -> list[Dataset]:
    """The Parametric Map (a list of one), or an empty list without a heatmap to show."""
    heatmap = ctx.result.heatmap
    if heatmap is None:
        return []
    slices = ctx.slices
    if heatmap.shape[0] != len(slices):
        raise ValueError(f"the heatmap has {heatmap.shape[0]} slices, the source {len(slices)}")
    rows, columns = int(heatmap.shape[1]), int(heatmap.shape[2])
    measures, orientation, positions = _plane_geometry(ctx, slices)
    # One source dataset per instance (a multi-frame source is one instance). Single-frame sources
    # of the map's matrix: highdicom copies each source's own position (the same values), because
    # given positions make it match every frame to its source by a search through all the sources
    # (quadratic: 10 s of a 1,000-slice series' 15 s in the map). Otherwise the positions are given.
    sources = list({s.sop_instance_uid: s.dataset for s in slices}.values())
    copied = len(sources) > 1 and all((d.get("Rows"), d.get("Columns")) == (rows, columns) for d in sources)
    options = ctx.options
    pm = HeaderOnlyParametricMap(
        source_images=sources,
        # Zeros of the map's shape that take no memory (a broadcast view): highdicom writes the
        # header from it (functional groups, derivation, mappings) and no pixels; they are
        # written below, one frame at a time (highdicom would hold the scores, every frame's
        # bytes and their join: three copies of a float32 volume).
        pixel_array=np.broadcast_to(np.zeros((1, 1, 1), dtype=np.float32), (len(slices), rows, columns)),
        series_instance_uid=ctx.series_uid("pm"),
        series_number=options.series_number("pm"),
        sop_instance_uid=ctx.instance_uid("pm", "1"),
        instance_number=1,
        manufacturer=options.manufacturer,
        manufacturer_model_name=ctx.model_name,
        software_versions=options.software_version,
        device_serial_number=ctx.device_uid,  # software: the Device UID identifies this trained model
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[_real_world_value_mapping(ctx)],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="AI_HEATMAP",
        content_description=f"Suspected-infection heatmap ({ctx.result.model.name}); not for clinical use"[:64],
        pixel_measures=measures,
        plane_orientation=orientation,
        plane_positions=None if copied else positions,
        contributing_equipment=[ctx.contributing_equipment()],
        series_description=ctx.series_description("COVID-CT heatmap map"),
    )
    ctx.set_software_versions(pm)
    pm.BodyPartExamined = "CHEST"
    _fix_dimension_organization(pm, ctx.uid("pm", "dimension-organization"))
    order = _order_frames_along_normal(pm, slices)
    if len(pm.FloatPixelData):
        raise ValueError("highdicom encoded the map's frames itself")
    if options.defer_map_pixels:
        del pm.FloatPixelData
        length = len(slices) * rows * columns * 4
        defer_pixels(pm, DeferredPixels("FloatPixelData", "OF", length, lambda: _frame_bytes(heatmap, order)))
    else:
        pm.FloatPixelData = _frames(heatmap, order)
    pm.file_meta.TransferSyntaxUID = MAP_TRANSFER_SYNTAX_UID
    stamp(pm, ctx.created)
    return [pm]


def _frames(heatmap: np.ndarray, order: np.ndarray) -> bytes:
    """Float Pixel Data: frame ``j`` the quantised heatmap of slice ``order[j]``, little endian
    (bytes: pydicom takes a bytearray for a list of values)."""
    frames = np.empty(heatmap.shape, dtype="<f4")
    for j, i in enumerate(order):
        _quantise_into(frames[j], heatmap[int(i)])
    return frames.tobytes()


def _frame_bytes(heatmap: np.ndarray, order: np.ndarray) -> Iterator[bytes]:
    """The frames of :func:`_frames` one at a time (what a deferred map's file is written from)."""
    frame = np.empty(heatmap.shape[1:], dtype="<f4")
    for i in order:
        _quantise_into(frame, heatmap[int(i)])
        yield frame.tobytes()


def _along(normal: np.ndarray, position: list[float]) -> float:
    return float(np.dot(normal, [float(v) for v in position]))


def _order_frames_along_normal(pm: Dataset, slices: list[SliceRef]) -> np.ndarray:
    """Put the frames in ascending order along the slice normal, cross(row, column direction):
    the order in which OHIF (cornerstone) builds the CT volume. Each frame keeps its functional
    groups; the dimension index values follow the frame numbers. Returns, per frame, the index of
    its source slice (the slices are told apart by position: highdicom refuses duplicates)."""
    shared = pm.SharedFunctionalGroupsSequence[0]
    normal = slice_normal([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    frames = pm.PerFrameFunctionalGroupsSequence
    along = [_along(normal, f.PlanePositionSequence[0].ImagePositionPatient) for f in frames]
    order = np.argsort(along, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        items = [frames[int(i)] for i in order]
        for number, item in enumerate(items, start=1):
            item.FrameContentSequence[0].DimensionIndexValues = number
        pm.PerFrameFunctionalGroupsSequence = Sequence(items)
    source_along = np.array([_along(normal, slice_position(s) or [0.0, 0.0, 0.0]) for s in slices])
    source_order = np.argsort(source_along, kind="stable")
    if not np.allclose(np.sort(along), source_along[source_order], atol=1e-3):
        raise ValueError("the Parametric Map's frame positions differ from its source slices'")
    return source_order


def _fix_dimension_organization(pm: Dataset, uid: str) -> None:
    """highdicom draws a random Dimension Organization UID; make it derived like every other UID."""
    for item in pm.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in pm.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid
