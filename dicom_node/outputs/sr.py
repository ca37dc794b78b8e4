"""The Comprehensive 3D SR: a TID 1500 Measurement Report of one series' result (IHE AIR).

Content tree (PS3.16 names)::

    TID 1500 Measurement Report
      TID 1001/1002/1004 observation context: device observer (model name, manufacturer,
                         Device UID derived from model name + version + weights sha256)
      Procedure reported: LN 25045-6 "CT unspecified body region" (CID 100 has no chest CT)
      Imaging Measurements
        TID 1501 image-level group "Series classification": finding (COVID-19 / community
            acquired pneumonia / pneumonia), finding site lung, TID 4019 algorithm, the three
            class probabilities, each its own concept (the node's codes "Probability of
            COVID-19", "Probability of CAP" (spelt out as its Equivalent Meaning of Concept Name),
            ..., scheme 99COVIDCT) in UCUM "%", lung involvement (DCM 113288 "Volume
            Ratio", UCUM "%", with its TID 300 "Equivalent Meaning of Concept Name"; only with a
            region), each measurement INFERRED FROM a SCOORD (TID 300 / TID 320): the box
            around the lungs on the first key slice, the qualitative evaluation finding =
            present / absent / indeterminate, the source images (the lung slices)
        per suspected-infection region, one finding in two groups that share its tracking
        identifier and UID (the SEG segment's TrackingUID):
          TID 1411 volumetric ROI group: the SEG segment, its source images, volume, finding,
              TID 4019 algorithm and finding site lung under the measurement
          TID 1410 planar ROI group: the region's outline on its key slice (the slice where it
              is largest) as a closed SCOORD POLYLINE on that CT image, its area there, finding,
              TID 4019 algorithm and finding site lung under the measurement
        and per region a TID 1410 planar ROI group of its own (tracking UID derived from the
        region's, identifier the region's with ": centre"): the point deepest inside the region on
        its key slice as a SCOORD POINT on that CT image, and the finding
      Qualitative Evaluations (TID 1500 row 12): the decision as a code, the decision and reason
          as text, and the "not for clinical use" statement

Why every group of Imaging Measurements carries spatial coordinates: viewers (OHIF 3.x among
them) list a TID 1500 report's measurement groups as measurements that jump to their image, and
take a group without SCOORD/SCOORD3D for an error. The classification's box says which slice to
look at; the planar groups draw each finding on the CT. Why the centre points: OHIF 3.13 restores
another program's SR as its own measurements (and otherwise badges it "not compatible") only if
one finding maps to one of its tools, by an OHIF tool name as tracking identifier or by the
graphic of the finding's first image region: a rectangle (POLYLINE of 4 or 5 points) or a POINT,
not an outline. A point per region, a finding of its own, keeps the outline the region's graphic.

What a viewer prints, and so how the numbers are coded: OHIF 3.13 labels each number with its
concept's meaning, its value to two decimals and its unit's code ("Probability: 0.99 1"), prints
a value of 0 as nothing, and a group-level finding site of a region as "363698007: Lung". Hence
one concept per class probability, per cent, no zero-valued number (a zero involvement is left
to the impression text), and the regions' finding site under each measurement (TID 300 row 4).

``no_decision``: no probabilities the model stands behind, so nothing to measure and no
Imaging Measurements container (TID 1500 asks for one of rows 6, 10 or 12); the decision,
pneumonia = indeterminate, and the reason are in the Qualitative Evaluations container.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from dicom_node.outputs import codes
from dicom_node.outputs.common import BuildContext, SliceRef, pixel_spacing, stamp
from dicom_node.outputs.geometry import box, inner_point, key_slice, outline, polygon_area
from model.contract.notice import DICOM_NOTICE
from model.contract.result import ABNORMAL_CLASSES, CLASSES

RelationshipType = hd.sr.RelationshipTypeValues


def percent(value: float) -> float:
    """A 0-1 value in per cent, to four significant digits (a tiny probability stays non-zero:
    viewers print a zero as an empty value)."""
    return float(f"{100.0 * float(value):.4g}")


def _probability(value: float, class_name: str, where: hd.sr.CoordinatesForMeasurement) -> hd.sr.Measurement:
    """TID 300 Measurement "Probability of <class>" (the node's code for the class) in per cent,
    so that a viewer that prints a measurement's concept, value and unit says which class it is;
    an abbreviated concept spelt out in full under it (TID 300 Equivalent Meaning of Concept Name)."""
    measurement = hd.sr.Measurement(
        name=codes.CLASS_PROBABILITIES[class_name],
        value=percent(value),
        unit=codes.PERCENT,
        referenced_coordinates=[where],
    )
    in_full = codes.CLASS_PROBABILITY_IN_FULL.get(class_name)
    if in_full:
        _insert_equivalent_meaning(measurement, in_full)
    return measurement


def _insert_equivalent_meaning(measurement: hd.sr.Measurement, meaning: str) -> None:
    measurement[0].ContentSequence.insert(
        0,
        hd.sr.TextContentItem(
            name=codes.EQUIVALENT_MEANING, value=meaning, relationship_type=RelationshipType.HAS_CONCEPT_MOD
        ),
    )


def _source_for_region(s: SliceRef) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=s.sop_class_uid,
        referenced_sop_instance_uid=s.sop_instance_uid,
        referenced_frame_numbers=None if s.frame is None else [s.frame],
    )


def classification_view(ctx: BuildContext) -> tuple[SliceRef, np.ndarray]:
    """Where the classification points: the first key slice (else the slice with the most lung,
    else the middle one) and the box around the lungs on it (all of the image without a lung
    mask), as (column, row) points of a closed polyline."""
    result = ctx.result
    lungs = None if result.lung_mask is None else np.asarray(result.lung_mask, dtype=bool)
    if result.key_slices:
        z = int(result.key_slices[0])
    elif lungs is not None and lungs.any():
        z = key_slice(lungs)
    else:
        z = len(ctx.slices) // 2
    s = ctx.slices[z]
    shape = (int(s.dataset.Rows), int(s.dataset.Columns))
    return s, box(lungs[z] if lungs is not None else np.zeros(shape, dtype=bool))


def _classification_coordinates(ctx: BuildContext) -> hd.sr.CoordinatesForMeasurement:
    s, points = classification_view(ctx)
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points, source_image=_source_for_region(s)
    )


def _group_images(slices: list[SliceRef]) -> list[tuple[SliceRef, list[int] | None]]:
    """One reference per source instance; for a multi-frame instance, all of its frames in it."""
    by_uid: dict[str, tuple[SliceRef, list[int] | None]] = {}
    for s in slices:
        entry = by_uid.get(s.sop_instance_uid)
        if entry is None:
            by_uid[s.sop_instance_uid] = (s, None if s.frame is None else [s.frame])
        elif s.frame is not None and entry[1] is not None:
            entry[1].append(s.frame)
    return list(by_uid.values())


def _finding_and_evaluation(decision: str) -> tuple[Code, Code]:
    if decision in ABNORMAL_CLASSES:
        return codes.CLASS_FINDINGS[decision], codes.PRESENT
    if decision == "normal":
        return codes.PNEUMONIA, codes.ABSENT
    return codes.PNEUMONIA, codes.INDETERMINATE


def classification_label(decision: str) -> str:
    """The tracking identifier of the image-level group: what a viewer's measurement list shows."""
    return f"Series classification: {codes.DECISION_NAMES[decision]}"[:64]


def _image_level_group(ctx: BuildContext) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    result = ctx.result
    finding, evaluation = _finding_and_evaluation(result.decision)
    measurements = []
    if result.decision != "no_decision":
        for c in CLASSES:
            measurements.append(_probability(result.probabilities.get(c, 0.0), c, _classification_coordinates(ctx)))
        # No suspected infection: no involvement to measure (the impression says 0 %); viewers
        # would print a zero as an empty value.
        if result.lung_involvement_percent:
            involvement = hd.sr.Measurement(
                name=codes.VOLUME_RATIO,
                value=round(float(result.lung_involvement_percent), 3),
                unit=codes.PERCENT,
                referenced_coordinates=[_classification_coordinates(ctx)],
            )
            _insert_equivalent_meaning(involvement, "Lung involvement: suspected infection volume / lung volume")
            measurements.append(involvement)
    looked_at = [s for s in ctx.slices if not result.lung_slices or result.lung_slices[s.index]] or ctx.slices
    source_images = [
        hd.sr.SourceImageForMeasurementGroup.from_source_image(s.dataset, referenced_frame_numbers=frames)
        for s, frames in _group_images(looked_at)
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        # The identifier names the decision: viewers list a group by it.
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=ctx.uid("sr", "classification", "tracking"), identifier=classification_label(result.decision)
        ),
        finding_type=finding,
        algorithm_id=ctx.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
        measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=evaluation)],
        source_images=source_images,
    )


def _region_groups(ctx: BuildContext) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    segments = ctx.segments()
    if not segments:
        return []
    finding, _ = _finding_and_evaluation(ctx.result.decision)
    seg_uid = ctx.instance_uid("seg", "1")
    groups = []
    for segment in segments:
        refs = [ctx.slices[i] for i in segment.slice_indices]
        source_images = [
            hd.sr.SourceImageForSegmentation.from_source_image(s.dataset, referenced_frame_numbers=frames)
            for s, frames in _group_images(refs)
        ]
        # TID 1411 has no Algorithm Identification row of its own: TID 4019 goes under each
        # measurement (TID 1419 row 20, HAS CONCEPT MOD).
        volume = hd.sr.Measurement(
            name=codes.VOLUME,
            value=round(segment.volume_ml, 3),
            unit=codes.CUBIC_CENTIMETER,
            algorithm_id=ctx.sr_algorithm(),
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
        )
        referenced_segment = hd.sr.ReferencedSegment(
            sop_class_uid=SegmentationStorage,
            sop_instance_uid=seg_uid,
            segment_number=segment.number,
            source_images=source_images,
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id),
                referenced_segment=referenced_segment,
                finding_type=finding,
                measurements=[volume],
            )
        )
    _fix_source_image_for_segmentation_meaning(groups)
    return groups


def centre_label(tracking_id: str) -> str:
    """The tracking identifier of a region's centre point: the region's, with ": centre"."""
    return f"{tracking_id}: centre"


Planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def _planar_groups(ctx: BuildContext) -> list[tuple[Planar, Planar]]:
    """Two TID 1410 groups per region on its key slice: its outline with its area there (the
    region's finding), and the point deepest inside it (a finding of its own)."""
    labels = ctx.label_volume()
    if labels is None:
        return []
    finding, _ = _finding_and_evaluation(ctx.result.decision)
    groups = []
    for segment in ctx.segments():
        s = ctx.slices[segment.key_index]
        on_slice = labels[s.index] == segment.number
        points = outline(on_slice)
        spacing = pixel_spacing(s)
        measurements = []
        if spacing is not None:
            area = polygon_area(points, (spacing[0], spacing[1]))
            measurements.append(
                hd.sr.Measurement(
                    name=codes.AREA,
                    value=round(area, 3),
                    unit=codes.SQUARE_MILLIMETER,
                    algorithm_id=ctx.sr_algorithm(),
                    finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
                )
            )
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points, source_image=_source_for_region(s)
        )
        planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id),
            referenced_region=region,
            finding_type=finding,
            measurements=measurements or None,
        )
        centre = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=ctx.uid("region", str(segment.number), "centre", "tracking"),
                identifier=centre_label(segment.tracking_id),
            ),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT,
                graphic_data=inner_point(on_slice),
                source_image=_source_for_region(s),
            ),
            finding_type=finding,
        )
        groups.append((planar, centre))
    return groups


def _fix_source_image_for_segmentation_meaning(
    groups: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
) -> None:
    """highdicom 0.28 writes (121233, DCM) with the meaning "Source Image for Segmentation"; the
    standard's meaning (PS3.16 Annex D, and pydicom's code dictionary) is "Source image for
    segmentation". Validators compare meanings, so write the standard's."""
    standard = codes.SOURCE_IMAGE_FOR_SEGMENTATION
    for group in groups:
        for item in group[0].ContentSequence:
            name = item.ConceptNameCodeSequence[0]
            if name.CodeValue == standard.value and name.CodingSchemeDesignator == standard.scheme_designator:
                name.CodeMeaning = standard.meaning


def decision_text(ctx: BuildContext) -> str:
    """The decision in words, with the probabilities and the model's reason."""
    result = ctx.result
    name = codes.DECISION_NAMES[result.decision]
    if result.decision == "no_decision":
        return f"AI result: no decision. Reason: {result.reason}"
    probs = ", ".join(f"{codes.CLASS_NAMES[c]} {result.probabilities.get(c, 0.0):.3f}" for c in CLASSES)
    text = f"AI result: {name} (probabilities: {probs}). Reason: {result.reason}"
    if result.lung_involvement_percent is not None:
        # The reason ends with its own full stop (the not-for-clinical-use notice).
        text = f"{text.rstrip('.')}. Lung involvement {result.lung_involvement_percent:.1f} %"
    return text


def _qualitative_evaluations(ctx: BuildContext) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12-14: a readable summary next to the coded content."""
    finding, evaluation = _finding_and_evaluation(ctx.result.decision)
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipType.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(name=finding, value=evaluation, relationship_type=RelationshipType.CONTAINS),
            hd.sr.TextContentItem(
                name=codes.IMPRESSION, value=decision_text(ctx), relationship_type=RelationshipType.CONTAINS
            ),
            hd.sr.TextContentItem(name=codes.COMMENT, value=DICOM_NOTICE, relationship_type=RelationshipType.CONTAINS),
        ]
    )
    return container


def _seg_stub(ctx: BuildContext) -> Dataset:
    """Evidence entry for the SEG the region groups reference (same study, the SEG series)."""
    ds = Dataset()
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID = ctx.instance_uid("seg", "1")
    ds.StudyInstanceUID = ctx.study_instance_uid
    ds.SeriesInstanceUID = ctx.series_uid("seg")
    return ds


def build_sr(ctx: BuildContext) -> list[Dataset]:
    """The SR of the result (one instance, in a list like every writer's objects)."""
    model = ctx.result.model
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=ctx.device_uid,
        name=model.name[:64],
        manufacturer_name=ctx.options.manufacturer,
        model_name=model.name[:64],
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE_OBSERVER, observer_identifying_attributes=device
        )
    )
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [_image_level_group(ctx)]
    for volumetric, (planar, centre) in zip(_region_groups(ctx), _planar_groups(ctx), strict=True):
        groups.extend([volumetric, planar, centre])
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.CT_PROCEDURE,
        imaging_measurements=groups,
    )
    if ctx.result.decision == "no_decision":
        # highdicom builds Imaging Measurements always; without a decision it has nothing to say.
        kept = [
            i
            for i in report[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue != codes.IMAGING_MEASUREMENTS.value
        ]
        report[0].ContentSequence = hd.sr.ContentSequence(kept)
    report[0].ContentSequence.append(_qualitative_evaluations(ctx))
    evidence = [s.dataset for s, _ in _group_images(ctx.slices)]
    if ctx.segments():
        evidence.append(_seg_stub(ctx))
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=ctx.series_uid("sr"),
        series_number=ctx.options.series_number("sr"),
        sop_instance_uid=ctx.instance_uid("sr", "1"),
        instance_number=1,
        manufacturer=ctx.options.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=ctx.options.institution_name,
        series_description=ctx.series_description("COVID-CT report"),
        contributing_equipment=[ctx.contributing_equipment()],
        manufacturer_model_name=ctx.model_name,
    )
    ctx.set_software_versions(sr)
    if ctx.result.decision != "no_decision":  # the probabilities use the node's own codes
        sr.CodingSchemeIdentificationSequence = [
            CodingSchemeIdentificationItem(
                designator=codes.PRIVATE_SCHEME,
                name=codes.PRIVATE_SCHEME_NAME,
                responsible_organization=ctx.options.manufacturer,
            )
        ]
    stamp(sr, ctx.created)
    return [sr]
