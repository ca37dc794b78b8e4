"""The Comprehensive 3D SR: a TID 1500 Measurement Report of one series' result (IHE AIR).

Content tree (PS3.16 names)::

    TID 1500 Measurement Report
      TID 1001/1002/1004 observation context: device observer (model name, manufacturer,
                         Device UID derived from model name + version + weights sha256)
      Procedure reported: LN 25045-6 "CT unspecified body region" (CID 100 has no chest CT)
      Imaging Measurements
        TID 1501 image-level group "Series classification": finding (COVID-19 / community
            acquired pneumonia / pneumonia), finding site lung, TID 4019 algorithm, the three
            class probabilities (DCM 122157 "Probability", UCUM "1", each labelled with TID 300
            "Equivalent Meaning of Concept Name"), lung involvement (DCM 113288 "Volume Ratio",
            UCUM "%"), the qualitative evaluation finding = present / absent / indeterminate,
            the source images (the lung slices)
        TID 1411 volumetric ROI group per suspected-infection region: tracking identifier and
            UID (the SEG segment's TrackingUID), the SEG segment, its source images, volume,
            finding, finding site lung, TID 4019 algorithm
      Qualitative Evaluations (TID 1500 row 12): the decision as a code, the decision and reason
          as text, and the "not for clinical use" statement

``no_decision``: the image-level group has finding pneumonia = indeterminate and no
probabilities (the model gave none it stands behind); the reason is the impression text.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from dicom_node.outputs import codes
from dicom_node.outputs.common import BuildContext, SliceRef, stamp
from model.contract.notice import DICOM_NOTICE
from model.contract.result import CLASSES

RelationshipType = hd.sr.RelationshipTypeValues


def _probability(value: float, class_name: str) -> hd.sr.Measurement:
    """TID 300 Measurement "Probability" with TID 300 row 16 Equivalent Meaning of Concept Name
    saying which class (three measurements share the concept name)."""
    measurement = hd.sr.Measurement(name=codes.PROBABILITY, value=round(float(value), 6), unit=codes.UNITLESS)
    meaning = hd.sr.TextContentItem(
        name=codes.EQUIVALENT_MEANING,
        value=f"Probability of {class_name}",
        relationship_type=RelationshipType.HAS_CONCEPT_MOD,
    )
    measurement[0].ContentSequence = hd.sr.ContentSequence([meaning])
    return measurement


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
    if decision in ("covid", "cap"):
        return codes.CLASS_FINDINGS[decision], codes.PRESENT
    if decision == "normal":
        return codes.PNEUMONIA, codes.ABSENT
    return codes.PNEUMONIA, codes.INDETERMINATE


def _image_level_group(ctx: BuildContext) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    result = ctx.result
    finding, evaluation = _finding_and_evaluation(result.decision)
    measurements = []
    if result.decision != "no_decision":
        for c in CLASSES:
            measurements.append(_probability(result.probabilities.get(c, 0.0), codes.CLASS_NAMES[c]))
        if result.lung_involvement_percent is not None:
            involvement = hd.sr.Measurement(
                name=codes.VOLUME_RATIO, value=round(float(result.lung_involvement_percent), 3), unit=codes.PERCENT
            )
            involvement[0].ContentSequence = hd.sr.ContentSequence(
                [
                    hd.sr.TextContentItem(
                        name=codes.EQUIVALENT_MEANING,
                        value="Lung involvement: suspected infection volume / lung volume",
                        relationship_type=RelationshipType.HAS_CONCEPT_MOD,
                    )
                ]
            )
            measurements.append(involvement)
    looked_at = [s for s in ctx.slices if not result.lung_slices or result.lung_slices[s.index]] or ctx.slices
    source_images = [
        hd.sr.SourceImageForMeasurementGroup.from_source_image(s.dataset, referenced_frame_numbers=frames)
        for s, frames in _group_images(looked_at)
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=ctx.uid("sr", "classification", "tracking"), identifier="Series classification"),
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
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
                measurements=[volume],
            )
        )
    _fix_source_image_for_segmentation_meaning(groups)
    return groups


def _fix_source_image_for_segmentation_meaning(groups: list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]) -> None:
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
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipType.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(name=finding, value=evaluation, relationship_type=RelationshipType.CONTAINS),
            hd.sr.TextContentItem(name=codes.IMPRESSION, value=decision_text(ctx), relationship_type=RelationshipType.CONTAINS),
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


def build_sr(ctx: BuildContext) -> Dataset:
    """The SR of the result (one instance)."""
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
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        _image_level_group(ctx)
    ]
    groups.extend(_region_groups(ctx))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.CT_PROCEDURE,
        imaging_measurements=groups,
    )
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
    stamp(sr, ctx.created)
    return sr
