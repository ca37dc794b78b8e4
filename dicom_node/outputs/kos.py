"""The Key Object Selection document of the key slices (TID 2010).

Title DCM 113000 "Of Interest" (CID 7010), the model as device observer, a Key Object Description
saying why these slices (strongest findings of the model, with the decision and "not for clinical
use"), then one IMAGE reference per key slice, strongest first. A key slice of a multi-frame source
is referenced by its instance and Referenced Frame Number. No key slices: no KOS.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_node.outputs import codes
from dicom_node.outputs.common import BuildContext, SliceRef, stamp
from model.contract.notice import DICOM_NOTICE


def key_slice_refs(ctx: BuildContext) -> list[SliceRef]:
    """The key slices, strongest first, without repeats."""
    seen: set[int] = set()
    out = []
    for i in ctx.result.key_slices:
        i = int(i)
        if not 0 <= i < len(ctx.slices):
            raise ValueError(f"key slice {i} is outside the series (0-{len(ctx.slices) - 1})")
        if i not in seen:
            seen.add(i)
            out.append(ctx.slices[i])
    return out


def build_kos(ctx: BuildContext) -> list[Dataset]:
    """The KOS (a list of one), or an empty list when the result has no key slices."""
    refs = key_slice_refs(ctx)
    if not refs:
        return []
    result, options = ctx.result, ctx.options
    model = result.model
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=ctx.device_uid, name=model.name[:64], manufacturer_name=options.manufacturer, model_name=model.name[:64]
    )
    # One IMAGE item per instance; the frames of a multi-frame instance are added below.
    instances: dict[str, list[int]] = {}
    datasets: list[Dataset] = []
    for s in refs:
        if s.sop_instance_uid not in instances:
            instances[s.sop_instance_uid] = []
            datasets.append(s.dataset)
        if s.frame is not None:
            instances[s.sop_instance_uid].append(s.frame)
    decision = codes.DECISION_NAMES[result.decision]
    description = (
        f"Key slices: the {len(refs)} slice(s) with the strongest suspected-infection findings of the AI model "
        f"{model.name} {model.version} (result: {decision}). {DICOM_NOTICE}"
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.KOS_TITLE,
        referenced_objects=datasets,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DEVICE_OBSERVER, observer_identifying_attributes=device
        ),
        description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=datasets,
        content=content,
        series_instance_uid=ctx.series_uid("kos"),
        series_number=options.series_number("kos"),
        sop_instance_uid=ctx.instance_uid("kos", "1"),
        instance_number=1,
        manufacturer=options.manufacturer,
        institution_name=options.institution_name,
        series_description=ctx.series_description("COVID-CT key slices"),
        contributing_equipment=[ctx.contributing_equipment()],
        manufacturer_model_name=ctx.model_name,
    )
    ctx.set_software_versions(kos)
    for item in kos.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        # TID 2010: the purpose of reference is not conveyed on the selected images (highdicom
        # writes a generic (260753009, SCT, "Source") concept name; the Concept Name Code
        # Sequence is optional for IMAGE items, PS3.3 C.17.3).
        del item.ConceptNameCodeSequence
        frames = instances.get(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        if frames:
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = frames if len(frames) > 1 else frames[0]
    stamp(kos, ctx.created)
    return [kos]
