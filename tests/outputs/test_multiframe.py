"""Outputs of a multi-frame source: the phantom as one Enhanced CT instance whose frames run
against the slice order.

Covers: SR and KOS references carry Referenced Frame Number (one IMAGE item per instance with its
frames), the SEG's frames derive from the right source frames, one SC per frame referencing its
frame, geometry taken from the functional groups, and the refusal of a multi-frame source without
frame numbers.
Not covered: validators (test_validators.py validates these objects too).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dicom_node.outputs.build import build_outputs
from tests.outputs.conftest import Case


def frame_of(case: Case, index: int) -> int:
    assert case.sources.frame_numbers is not None
    frame = case.sources.frame_numbers[index]
    assert frame is not None
    return frame


def test_sr_references_frames(multiframe: Case) -> None:
    sr = multiframe.outputs["sr"][0]
    result = multiframe.result
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    image_group = measurements.ContentSequence[0]
    (image,) = [i for i in image_group.ContentSequence if i.ValueType == "IMAGE"]
    ref = image.ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == result.sop_instance_uids[0]
    lung = [frame_of(multiframe, i) for i, flag in enumerate(result.lung_slices) if flag]
    assert [int(v) for v in ref.ReferencedFrameNumber] == lung
    region_group = measurements.ContentSequence[1]
    (source,) = [i for i in region_group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121233"]
    z0, z1 = result.regions[0].slice_range
    assert [int(v) for v in source.ReferencedSOPSequence[0].ReferencedFrameNumber] == [
        frame_of(multiframe, z) for z in range(z0, z1 + 1)
    ]


def test_kos_references_the_key_frames(multiframe: Case) -> None:
    (kos,) = multiframe.outputs["kos"]
    (image,) = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    frames = image.ReferencedSOPSequence[0].ReferencedFrameNumber
    assert [int(v) for v in frames] == [frame_of(multiframe, k) for k in multiframe.result.key_slices]


def test_seg_frames_derive_from_the_right_source_frames(multiframe: Case) -> None:
    (seg,) = multiframe.outputs["seg"]
    result = multiframe.result
    assert result.region_labels is not None
    slice_of_frame = {frame_of(multiframe, i): i for i in range(len(result.sop_instance_uids))}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, pixel in zip(seg.PerFrameFunctionalGroupsSequence, pixels):
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == result.sop_instance_uids[0]
        z = slice_of_frame[int(source.ReferencedFrameNumber)]
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        assert np.array_equal(pixel.astype(bool), result.region_labels[z] == result.regions[number - 1].index)


def test_sc_per_frame(multiframe: Case, covid: Case) -> None:
    scs = multiframe.outputs["sc"]
    assert len(scs) == sum(multiframe.result.lung_slices)
    for sc in scs:
        index = sc.InstanceNumber - 1
        source = sc.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == multiframe.result.sop_instance_uids[0]
        assert int(source.ReferencedFrameNumber) == frame_of(multiframe, index)
        assert list(sc.PatientOrientation) == ["L", "P"]
        assert sc.PixelSpacing == covid.outputs["sc"][0].PixelSpacing  # same phantom, single-frame
    assert len({sc.SOPInstanceUID for sc in scs}) == len(scs)


def test_multiframe_source_needs_frame_numbers(multiframe: Case) -> None:
    sources = dataclasses.replace(multiframe.sources, frame_numbers=None)
    with pytest.raises(ValueError, match="multi-frame; a frame number 1-24 is needed"):
        build_outputs(multiframe.result, sources, kinds=["sr"])
