"""Secondary Capture heatmap overlays: one RGB SC image per shown source slice.

A new series in the source study (series number ``OutputOptions.series_number("sc")``, description
"AI: ... NOT FOR DIAGNOSTIC USE"), one image per lung slice or per key slice
(``OutputOptions.sc_slices``), in the source slice order, at the source matrix size. Each image
references its source image (Source Image Sequence, with Referenced Frame Number for a multi-frame
source) and the source series (Referenced Series Sequence). Pixels:
:func:`dicom_node.outputs.render.render_overlay`. Burned In Annotation is NO: the label carries the
model's result, nothing that identifies the patient. Stored lossless (explicit VR little endian, or
RLE).

The instance number is the source slice's 1-based position, so one source slice always gives the
same SC (same UID, same bytes) whichever slices are shown.

Each image also carries its source slice's Frame of Reference UID and Image Plane (position,
orientation, spacing, thickness), so viewers scroll the overlays in step with the CT.
"""

from __future__ import annotations

from copy import copy as shallow_copy
from typing import TypeVar

import highdicom as hd
import numpy as np
from highdicom.frame import encode_frame
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import DS

from dicom_node.outputs.common import BuildContext, SliceRef, pixel_spacing, slice_orientation, slice_position, stamp
from dicom_node.outputs.render import LUNG_WINDOW_CENTER, LUNG_WINDOW_WIDTH, label_lines, render_overlay

PIXEL_DATA = Tag("PixelData")
_AXES = (("L", "R"), ("P", "A"), ("H", "F"))  # +x is patient left, +y posterior, +z head


def patient_orientation(image_orientation: list[float]) -> tuple[str, str]:
    """Patient Orientation (row direction, column direction) from Image Orientation (Patient),
    e.g. (L, P) for a standard axial slice; oblique directions get up to three letters."""
    values = [float(v) for v in image_orientation]
    if len(values) != 6:
        raise ValueError(f"ImageOrientationPatient must have 6 values, got {len(values)}")

    def letters(vector: list[float]) -> str:
        order = sorted(range(3), key=lambda k: -abs(vector[k]))
        out = ""
        for k in order:
            if abs(vector[k]) > 1e-3:
                out += _AXES[k][0] if vector[k] > 0 else _AXES[k][1]
        return out or "L"

    return letters(values[:3]), letters(values[3:])


def shown_slices(ctx: BuildContext) -> list[int]:
    """Indices of the slices that get an SC, in source order."""
    result = ctx.result
    if result.heatmap is None:
        return []
    if ctx.options.sc_slices == "key":
        return sorted(set(int(i) for i in result.key_slices))
    if result.lung_slices:
        return [i for i, lung in enumerate(result.lung_slices) if lung]
    return list(range(len(ctx.slices)))


def _references(ctx: BuildContext, s: SliceRef) -> tuple[list[Dataset], list[Dataset]]:
    """Source Image Sequence and Referenced Series Sequence of the SC of slice ``s``."""
    source = Dataset()
    source.ReferencedSOPClassUID = s.sop_class_uid
    source.ReferencedSOPInstanceUID = s.sop_instance_uid
    if s.frame is not None:
        source.ReferencedFrameNumber = s.frame
    instance = Dataset()
    instance.ReferencedSOPClassUID = s.sop_class_uid
    instance.ReferencedSOPInstanceUID = s.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = ctx.source_series_uid
    series.ReferencedInstanceSequence = [instance]
    return [source], [series]


_ACQUISITION_KEYS = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "AcquisitionTime",
)


def _acquisition_key(ds: Dataset) -> tuple[str, ...]:
    return tuple(str(ds.get(k, "")) for k in _ACQUISITION_KEYS)


def build_sc(ctx: BuildContext) -> list[Dataset]:
    """The SC overlay images (empty without a heatmap or without slices to show).

    The first image is built by highdicom; the others are copies of it with the per-slice
    attributes replaced (UIDs, instance number, references, orientation, spacing, the source's
    acquisition equipment, pixels): highdicom's per-instance checks cost ~25 ms an image, which is
    most of the time for a 128-slice series. The tests validate every image.
    """
    indices = shown_slices(ctx)
    if not indices:
        return []
    if ctx.sources.hu is None:
        raise ValueError("sources.hu is needed for the secondary-capture overlays")
    result, options = ctx.result, ctx.options
    heatmap = result.heatmap
    if heatmap is None:
        return []
    lines = label_lines(result, node_version=options.software_version)
    derivation = (
        f"Heatmap of model {result.model.name} {result.model.version} (inferno colormap, opaque above "
        f"{options.overlay_threshold:.2f}) over CT in lung window W{LUNG_WINDOW_WIDTH:.0f}/L{LUNG_WINDOW_CENTER:.0f}"
    )
    template: Dataset | None = None
    template_key: tuple[str, ...] = ()
    out: list[Dataset] = []
    for i in indices:
        s = ctx.slices[i]
        rgb = np.ascontiguousarray(
            render_overlay(ctx.sources.hu[i], heatmap[i], lines, threshold=options.overlay_threshold)
        )
        frame_part = () if s.frame is None else (str(s.frame),)
        sop_instance_uid = ctx.instance_uid("sc", s.sop_instance_uid, *frame_part)
        spacing = pixel_spacing(s)
        orientation = patient_orientation(slice_orientation(s))
        sc: Dataset
        if (
            template is None
            or _acquisition_key(s.dataset) != template_key
            or (spacing is not None) != ("PixelSpacing" in template)
        ):
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=s.dataset,
                pixel_array=rgb,
                photometric_interpretation="RGB",
                bits_allocated=8,
                coordinate_system="PATIENT",
                series_instance_uid=ctx.series_uid("sc"),
                series_number=options.series_number("sc"),
                sop_instance_uid=sop_instance_uid,
                instance_number=i + 1,
                manufacturer=options.manufacturer,
                patient_orientation=orientation,
                transfer_syntax_uid=options.sc_transfer_syntax_uid,
                series_description=ctx.series_description("COVID-CT heatmap"),
                institution_name=options.institution_name,
                contributing_equipment=[ctx.contributing_equipment()],
                manufacturer_model_name=ctx.model_name,
            )
            ctx.set_software_versions(sc)
            if spacing is not None:
                # SC Image Module, Basic Pixel Spacing Calibration Macro (set here: highdicom 0.28
                # types this argument as integers).
                sc.PixelSpacing = [DS(v, auto_format=True) for v in spacing[:2]]
            sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
            sc.DerivationDescription = derivation[:1024]
            sc.BurnedInAnnotation = "NO"
            sc.RecognizableVisualFeatures = "NO"
            sc.BodyPartExamined = "CHEST"
            sc.LossyImageCompression = "00"
            sc.ImageComments = "AI heatmap overlay. NOT FOR DIAGNOSTIC USE."
            stamp(sc, ctx.created)
            template, template_key = sc, _acquisition_key(s.dataset)
        else:
            sc = _copy_without_pixels(template)
            sc.SOPInstanceUID = UID(sop_instance_uid)
            sc.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
            sc.InstanceNumber = i + 1
            sc.PatientOrientation = list(orientation)
            if spacing is not None:
                sc.PixelSpacing = [DS(v, auto_format=True) for v in spacing[:2]]
            sc.PixelData = _encode(rgb, sc)
        sc.SourceImageSequence, sc.ReferencedSeriesSequence = _references(ctx, s)
        _place_on_the_ct(sc, s, spacing)
        out.append(sc)
    return out


def _place_on_the_ct(sc: Dataset, s: SliceRef, spacing: list[float] | None) -> None:
    """The source slice's Frame of Reference and Image Plane (both in the SC Image IOD, PS3.3
    A.8.1: Frame of Reference C, Image Plane U), so viewers sync the overlays with the CT. Left
    out when the source has no frame of reference, position or spacing."""
    frame_of_reference = s.dataset.get("FrameOfReferenceUID")
    position = slice_position(s)
    if not frame_of_reference or position is None or spacing is None:
        return
    sc.FrameOfReferenceUID = frame_of_reference
    sc.PositionReferenceIndicator = s.dataset.get("PositionReferenceIndicator", "")
    sc.ImageOrientationPatient = [DS(v, auto_format=True) for v in slice_orientation(s)]
    sc.ImagePositionPatient = [DS(v, auto_format=True) for v in position]
    thickness = s.dataset.get("SliceThickness")
    for group in s.dataset.get("SharedFunctionalGroupsSequence", []):
        measures = group.get("PixelMeasuresSequence")
        if measures and measures[0].get("SliceThickness"):
            thickness = measures[0].SliceThickness
    sc.SliceThickness = DS(thickness, auto_format=True) if thickness not in (None, "") else None


_D = TypeVar("_D", bound=Dataset)


def _clone(ds: Dataset, into: _D) -> _D:
    """A copy with new data elements and sequences all the way down (values of other elements
    are immutable or shallow-copied). ~10 times faster than copy.deepcopy on pydicom datasets."""
    out = into
    for elem in ds:
        if elem.tag == PIXEL_DATA:
            continue
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", Sequence([_clone(item, Dataset()) for item in elem.value])))
        else:
            out.add(DataElement(elem.tag, elem.VR, shallow_copy(elem.value)))
    return out


def _copy_without_pixels(template: Dataset) -> Dataset:
    copy = _clone(template, Dataset())
    copy.file_meta = _clone(template.file_meta, FileMetaDataset())
    return copy


def _encode(rgb: np.ndarray, sc: Dataset) -> bytes:
    frame = encode_frame(
        rgb,
        transfer_syntax_uid=sc.file_meta.TransferSyntaxUID,
        bits_allocated=8,
        bits_stored=8,
        photometric_interpretation="RGB",
        pixel_representation=0,
        planar_configuration=0,
    )
    return encapsulate([frame]) if sc.file_meta.TransferSyntaxUID.is_encapsulated else frame
