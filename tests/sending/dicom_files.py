"""Small DICOM files of the four output SOP classes, for tests of the sending side (their content
is not what is under test; the SOP classes, UIDs and transfer syntaxes are)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    ParametricMapStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from model.contract.uids import derived_uid

OUTPUT_SOP_CLASSES = {
    "sr": Comprehensive3DSRStorage,
    "sc": SecondaryCaptureImageStorage,
    "seg": SegmentationStorage,
    "kos": KeyObjectSelectionDocumentStorage,
    "pm": ParametricMapStorage,
}


def write_object(folder: Path, sop_class: UID, name: str, *, rle: bool = False, deflate: bool = False) -> Path:
    """One small object; an 8x8 RGB image for secondary capture (RLE Lossless when ``rle``); the
    file in Deflated Explicit VR Little Endian when ``deflate`` (as the node writes SEG and map)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = derived_uid("test-object", name)
    ds.StudyInstanceUID = derived_uid("test-study")
    ds.SeriesInstanceUID = derived_uid("test-series", str(sop_class))
    ds.PatientID = "TEST"
    ds.PatientName = "Test^Object"
    ds.Modality = "OT"
    if sop_class == SecondaryCaptureImageStorage:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = (np.arange(8 * 8 * 3, dtype=np.uint8)).tobytes()
        if rle:
            ds.compress(RLELossless)
    if deflate:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = folder / f"{name}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_outputs(folder: Path, count_sc: int = 2) -> list[Path]:
    """One SR, ``count_sc`` SC images, one SEG, one KOS and one Parametric Map."""
    paths = [write_object(folder, OUTPUT_SOP_CLASSES["sr"], "sr")]
    paths += [write_object(folder, OUTPUT_SOP_CLASSES["sc"], f"sc{i}") for i in range(count_sc)]
    paths.append(write_object(folder, OUTPUT_SOP_CLASSES["seg"], "seg"))
    paths.append(write_object(folder, OUTPUT_SOP_CLASSES["kos"], "kos"))
    paths.append(write_object(folder, OUTPUT_SOP_CLASSES["pm"], "pm"))
    return paths
