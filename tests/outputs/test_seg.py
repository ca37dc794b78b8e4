"""The segmentation of the suspected infection.

Covers: one binary segment per region (label, category/type, anatomy, AUTOMATIC with the model's
algorithm identification, tracking UID shared with the SR), only frames with content, each frame
derived from and positioned at the right source slice with the right pixels, a deterministic
Dimension Organization UID, no SEG without regions, and the thresholded-heatmap segment when the
result has no region labels.
Not covered: validators (test_validators.py), multi-frame sources (test_multiframe.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions
from model.contract.result import SeriesResult
from model.contract.uids import derived_uid
from tests.outputs.conftest import CREATED, Case


def frame_slices(seg: Dataset, result: SeriesResult) -> list[int]:
    """The source slice index of each SEG frame."""
    index = {uid: i for i, uid in enumerate(result.sop_instance_uids)}
    out = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        out.append(index[source.ReferencedSOPInstanceUID])
    return out


def test_segments_describe_the_regions(covid: Case) -> None:
    (seg,) = covid.outputs["seg"]
    result = covid.result
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert len(seg.SegmentSequence) == len(result.regions)
    for number, segment in enumerate(seg.SegmentSequence, start=1):
        assert segment.SegmentNumber == number
        assert segment.SegmentLabel == f"Suspected infection {number}"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == result.model.name and algorithm.AlgorithmVersion == result.model.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
        assert segment.AnatomicRegionSequence[0].CodeValue == "39607008"
        assert segment.TrackingUID == derived_uid(
            covid.source(0).SeriesInstanceUID, result.model.version, "region", str(number), "tracking"
        )
        assert "COVID-19" in segment.TrackingID


def test_only_frames_with_content_each_at_its_source_slice(covid: Case) -> None:
    (seg,) = covid.outputs["seg"]
    result = covid.result
    labels = result.region_labels
    assert labels is not None
    slices = frame_slices(seg, result)
    expected = sum(int(np.any(labels == region.index, axis=(1, 2)).sum()) for region in result.regions)
    assert seg.NumberOfFrames == len(slices) == expected
    pixels = seg.pixel_array.reshape(len(slices), seg.Rows, seg.Columns)
    for frame, z, pixel in zip(seg.PerFrameFunctionalGroupsSequence, slices, pixels):
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        region = result.regions[number - 1]
        assert np.array_equal(pixel.astype(bool), labels[z] == region.index)
        assert pixel.any()
        source = covid.source(z)
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [
            float(v) for v in source.ImagePositionPatient
        ]
    assert seg.FrameOfReferenceUID == covid.source(0).FrameOfReferenceUID
    referenced = {
        i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence
    }
    assert referenced == {result.sop_instance_uids[z] for z in slices}


def test_dimension_organization_uid_is_derived(covid: Case) -> None:
    (seg,) = covid.outputs["seg"]
    uid = derived_uid(covid.source(0).SeriesInstanceUID, covid.result.model.version, "seg", "dimension-organization")
    assert seg.DimensionOrganizationSequence[0].DimensionOrganizationUID == uid
    assert {item.DimensionOrganizationUID for item in seg.DimensionIndexSequence} == {uid}


def test_no_seg_without_regions(normal: Case) -> None:
    assert normal.outputs["seg"] == []


def test_thresholded_heatmap_when_the_result_has_no_region_labels(covid: Case) -> None:
    result = dataclasses.replace(covid.result, region_labels=None)
    out = build_outputs(
        result, covid.sources, kinds=["seg", "sr"], options=OutputOptions(seg_threshold=0.6, created=CREATED)
    )
    (seg,) = out["seg"]
    assert len(seg.SegmentSequence) == 1 and seg.SegmentSequence[0].SegmentLabel == "Suspected infection"
    assert result.heatmap is not None
    mask = np.asarray(result.heatmap >= 0.6)
    slices = frame_slices(seg, result)
    assert sorted(slices) == [z for z in range(mask.shape[0]) if mask[z].any()]
    pixels = seg.pixel_array.reshape(len(slices), seg.Rows, seg.Columns)
    assert all(np.array_equal(p.astype(bool), mask[z]) for p, z in zip(pixels, slices))
    # The SR's region group has the volume from the voxel size.
    sr = out["sr"][0]
    volumes = [
        float(item.MeasuredValueSequence[0].NumericValue)
        for group in sr.ContentSequence[-2].ContentSequence[1:]
        for item in group.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "118565006"
    ]
    assert volumes == [pytest.approx(mask.sum() * covid.series.voxel_ml, rel=1e-4)]
