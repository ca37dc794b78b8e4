"""The joint heatmap as a Parametric Map (highdicom ``ParametricMap``): what viewers fuse on the CT.

One multi-frame instance in the CT's frame of reference: one frame per source slice, in the
result's slice order (ascending along the slice normal), each at its slice's plane position and
orientation, derived from it (Derivation Image Sequence). Every slice, also those without a
score: OHIF 3.x places a map's frames on the CT by index and needs one per CT slice. The price
is size: 4 bytes per CT voxel (a 300-slice 512 x 512 CT gives a 315 MB map), so destinations
that do not fuse maps leave ``pm`` out of their outputs. Pixels are the heatmap values themselves, 32-bit
float in 0-1 (Float Pixel Data), with an identity Real World Value Mapping (unit "1", range 0-1)
and a window over that range. Body Part Examined CHEST, content qualification RESEARCH, the
model's algorithm as contributing equipment.

Why float and no Palette Color LUT: highdicom allows a palette only with integer pixels, and an
integer Parametric Map with the palette highdicom writes (and the ICC profile and Stored Value
Color Range the palette asks for) is reported by dciodvfy 2022 as carrying palette attributes its
Image Pixel Description rules forbid; viewers colour a map themselves (OHIF offers its colormaps
when it fuses one), and the SC overlays carry the colours for PACS that only show pictures.

A result without a heatmap (``no_decision``) gets no Parametric Map. A multi-frame source: the
frames derive from that instance's frames. Not for clinical use.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.outputs import codes
from dicom_node.outputs.common import BuildContext, SliceRef, pixel_spacing, slice_orientation, slice_position, stamp

LUT_LABEL = "AI_SCORE"


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
    scores = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    slices = ctx.slices
    measures, orientation, positions = _plane_geometry(ctx, slices)
    # One source dataset per instance (a multi-frame source is one instance); plane positions
    # are given, so highdicom does not read them from the sources.
    sources = list({s.sop_instance_uid: s.dataset for s in slices}.values())
    options = ctx.options
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=scores,
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
        plane_positions=positions,
        contributing_equipment=[ctx.contributing_equipment()],
        series_description=ctx.series_description("COVID-CT heatmap map"),
    )
    ctx.set_software_versions(pm)
    pm.BodyPartExamined = "CHEST"
    _fix_dimension_organization(pm, ctx.uid("pm", "dimension-organization"))
    stamp(pm, ctx.created)
    return [pm]


def _fix_dimension_organization(pm: Dataset, uid: str) -> None:
    """highdicom draws a random Dimension Organization UID; make it derived like every other UID."""
    for item in pm.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in pm.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid
