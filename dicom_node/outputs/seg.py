"""The Segmentation of the suspected infection (binary, one segment per region of the result).

Each segment: category "Morphologically abnormal structure", type "Lesion", anatomic region lung,
algorithm type AUTOMATIC with the model's algorithm identification, and the tracking identifier
and UID of the SR's region group (so a viewer links SR and SEG). Only frames with content are
stored, each derived from (and positioned at) its source slice. A result without regions gets no
SEG (an empty segmentation says nothing that the SR does not).

Single-frame sources: the SEG references the source slices that carry a segment. A multi-frame
source instance: the SEG's frames reference that instance's frames.

Written in Deflated Explicit VR Little Endian (``MAP_TRANSFER_SYNTAX_UID``): the bit-packed
frames are mostly zeros.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_node.outputs import codes
from dicom_node.outputs.common import MAP_TRANSFER_SYNTAX_UID, BuildContext, stamp


def _segment_descriptions(ctx: BuildContext) -> list[hd.seg.SegmentDescription]:
    algorithm = ctx.seg_algorithm()
    return [
        hd.seg.SegmentDescription(
            segment_number=segment.number,
            segment_label=segment.label,
            segmented_property_category=codes.SEGMENT_CATEGORY,
            segmented_property_type=codes.SEGMENT_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=segment.tracking_uid,
            tracking_id=segment.tracking_id,
            anatomic_regions=[codes.LUNG],
        )
        for segment in ctx.segments()
    ]


def _fix_dimension_organization(seg: Dataset, uid: str) -> None:
    """highdicom draws a random Dimension Organization UID; make it derived like every other UID."""
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid


def build_seg(ctx: BuildContext) -> list[Dataset]:
    """The SEG (a list of one), or an empty list when there are no suspected-infection regions."""
    segments = ctx.segments()
    labels = ctx.label_volume()
    if not segments or labels is None:
        return []
    with_content = sorted({i for segment in segments for i in segment.slice_indices})
    if ctx.has_multiframe_source:
        # One multi-frame source instance: the pixel array follows its frame order.
        instances = {ctx.slices[i].sop_instance_uid for i in range(len(ctx.slices))}
        if len(instances) != 1:
            raise ValueError("a multi-frame source must be a single instance for the SEG")
        source = ctx.slices[0].dataset
        frames = np.zeros((int(source.NumberOfFrames), *labels.shape[1:]), dtype=labels.dtype)
        for s in ctx.slices:
            if s.frame is None:
                raise ValueError(f"slice {s.index} of the multi-frame source has no frame number")
            frames[s.frame - 1] = labels[s.index]
        source_images = [source]
        pixel_array = frames
    else:
        source_images = [ctx.slices[i].dataset for i in with_content]
        pixel_array = labels[with_content]
    options = ctx.options
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(ctx),
        series_instance_uid=ctx.series_uid("seg"),
        series_number=options.series_number("seg"),
        sop_instance_uid=ctx.instance_uid("seg", "1"),
        instance_number=1,
        manufacturer=options.manufacturer,
        manufacturer_model_name=ctx.model_name,
        software_versions=options.software_version,
        device_serial_number=ctx.device_uid,  # software: the Device UID identifies this trained model
        omit_empty_frames=True,
        content_label="AI_INFECTION",
        content_description=f"Suspected infection ({ctx.result.model.name}); not for clinical use"[:64],
        series_description=ctx.series_description("COVID-CT infection SEG"),
        institution_name=options.institution_name,
        contributing_equipment=[ctx.contributing_equipment()],
    )
    ctx.set_software_versions(seg)
    _fix_dimension_organization(seg, ctx.uid("seg", "dimension-organization"))
    seg.file_meta.TransferSyntaxUID = MAP_TRANSFER_SYNTAX_UID
    stamp(seg, ctx.created)
    return [seg]
