"""Synthetic inputs for the output-writer tests: a small CT series on disk and a SeriesResult made
by hand (two blobs of "infection" in the heatmap, with their region labels).

The writers are the unit under test; the model is beside it, so nothing here runs the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicom_node.uids import derived_uid
from model.result import ModelInfo, Region, SeriesResult

PIXEL_SPACING_MM = 2.5
SLICE_THICKNESS_MM = 5.0


def phantom_hu(slices: int, size: int) -> np.ndarray:
    """A chest-like HU volume: air outside, a soft-tissue body ellipse, two lungs at -850 HU
    on the middle slices (the first and last two slices have no lung)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1.0
    lung_r = ((xx - 0.32) / 0.12) ** 2 + ((yy - 0.5) / 0.2) ** 2 <= 1.0
    lung_l = ((xx - 0.68) / 0.12) ** 2 + ((yy - 0.5) / 0.2) ** 2 <= 1.0
    vol = np.full((slices, size, size), -1000.0, dtype=np.float32)
    for z in range(slices):
        sl = vol[z]
        sl[body] = 40.0
        if 2 <= z < slices - 2:
            sl[lung_r | lung_l] = -850.0
    # A little deterministic texture so the window mapping is checked on more than two values.
    rng = np.random.default_rng(7)
    vol += rng.normal(0.0, 15.0, vol.shape).astype(np.float32)
    return vol


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """The lungs of :func:`phantom_hu` (HU below -600 inside the body outline)."""
    size = hu.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((xx - 0.5) / 0.40) ** 2 + ((yy - 0.5) / 0.30) ** 2 <= 1.0
    return (hu < -600) & body[None]


def write_ct_series(directory: Path, *, slices: int = 24, size: int = 128, seed: str = "fixture") -> tuple[list[Path], np.ndarray]:
    """Write a single-frame CT Image Storage series (slices ascending in z) and return the paths
    in slice order and the HU volume. Instance numbers run backwards so nothing may sort by them."""
    directory.mkdir(parents=True, exist_ok=True)
    hu = phantom_hu(slices, size)
    study_uid = derived_uid(seed, "study")
    series_uid = derived_uid(seed, "series")
    for_uid = derived_uid(seed, "frame-of-reference")
    paths = []
    for z in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = derived_uid(seed, "instance", str(z))
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.SeriesDate = "20240102"
        ds.SeriesTime = "101600"
        ds.AcquisitionDate = "20240102"
        ds.AcquisitionTime = "101700"
        ds.ContentDate = "20240102"
        ds.ContentTime = "101700"
        ds.AccessionNumber = "ACC0001"
        ds.Modality = "CT"
        ds.Manufacturer = "Synthetic Scanner Co"
        ds.ManufacturerModelName = "Phantom CT"
        ds.InstitutionName = "Test Hospital"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = "Chest 5mm"
        ds.PatientName = "Phantom^Chest"
        ds.PatientID = "PH0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = SLICE_THICKNESS_MM
        ds.KVP = 120
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 3
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = slices - z
        ds.ImagePositionPatient = [-160.0, -160.0, -100.0 + SLICE_THICKNESS_MM * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = np.round(hu[z] + 1024).astype(np.int16).tobytes()
        path = directory / f"ct{z:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    # The HU values exactly as a reader would get them back (stored values are rounded).
    return paths, np.round(hu + 1024).astype(np.int16).astype(np.float32) - 1024


MODEL = ModelInfo(name="covidnet-ws", version="1.2.0", weights_sha256="ab" * 32)


def blob_result(hu: np.ndarray, sop_instance_uids: list[str], *, decision: str = "covid") -> SeriesResult:
    """A SeriesResult with two Gaussian blobs in the heatmap (one per lung), their region labels
    (heatmap >= 0.5) and key slices at the blob centres."""
    slices, size, _ = hu.shape
    lungs = lung_mask(hu)
    zz, yy, xx = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    blobs = [(slices * 0.4, size * 0.5, size * 0.3, 1.0), (slices * 0.65, size * 0.55, size * 0.7, 0.8)]
    heat = np.zeros(hu.shape, dtype=np.float32)
    for cz, cy, cx, amp in blobs:
        r2 = ((zz - cz) / 3.0) ** 2 + ((yy - cy) / (size * 0.08)) ** 2 + ((xx - cx) / (size * 0.06)) ** 2
        heat = np.maximum(heat, amp * np.exp(-r2))
    heat[~lungs] = 0.0
    labels = np.zeros(hu.shape, dtype=np.uint16)
    regions = []
    voxel_ml = 2.5 * 2.5 * 5.0 / 1000.0
    for index, (cz, cy, cx, _amp) in enumerate(blobs, start=1):
        component = (heat >= 0.5) & (np.abs(xx - cx) < size * 0.2)
        labels[component] = index
        z_idx, y_idx, x_idx = np.nonzero(component)
        values = heat[component]
        peak = int(np.argmax(values))
        regions.append(
            Region(
                index=index,
                slice_range=(int(z_idx.min()), int(z_idx.max())),
                bbox=(int(z_idx.min()), int(y_idx.min()), int(x_idx.min()), int(z_idx.max()), int(y_idx.max()), int(x_idx.max())),
                volume_ml=float(component.sum() * voxel_ml),
                mean_score=float(values.mean()),
                max_score=float(values.max()),
                peak=(int(z_idx[peak]), int(y_idx[peak]), int(x_idx[peak])),
            )
        )
    lung_slices = [bool(lungs[z].any()) for z in range(slices)]
    key = [r.peak[0] for r in regions]
    probabilities = {"covid": 0.82, "cap": 0.12, "normal": 0.06}
    if decision == "cap":
        probabilities = {"covid": 0.2, "cap": 0.7, "normal": 0.1}
    return SeriesResult(
        probabilities=probabilities,
        decision=decision,
        reason="highest class probability above the decision threshold",
        model=MODEL,
        regions=regions,
        lung_involvement_percent=float(100.0 * (labels > 0).sum() / max(1, lungs.sum())),
        sop_instance_uids=list(sop_instance_uids),
        key_slices=key,
        lung_slices=lung_slices,
        heatmap=heat,
        region_labels=labels,
        lung_mask=lungs,
    )


def normal_result(hu: np.ndarray, sop_instance_uids: list[str]) -> SeriesResult:
    """A confident "normal" result: no regions, a faint heatmap everywhere in the lungs."""
    lungs = lung_mask(hu)
    heat = np.where(lungs, 0.05, 0.0).astype(np.float32)
    return SeriesResult(
        probabilities={"covid": 0.03, "cap": 0.05, "normal": 0.92},
        decision="normal",
        reason="highest class probability above the decision threshold",
        model=MODEL,
        regions=[],
        lung_involvement_percent=0.0,
        sop_instance_uids=list(sop_instance_uids),
        key_slices=[],
        lung_slices=[bool(lungs[z].any()) for z in range(hu.shape[0])],
        heatmap=heat,
        region_labels=np.zeros(hu.shape, dtype=np.uint16),
        lung_mask=lungs,
    )


def no_decision_result(sop_instance_uids: list[str]) -> SeriesResult:
    """What the model returns when it cannot decide (here: too few lung slices)."""
    return SeriesResult(
        probabilities={"covid": 1 / 3, "cap": 1 / 3, "normal": 1 / 3},
        decision="no_decision",
        reason="only 3 slices contain lung; at least 10 are needed",
        model=MODEL,
        sop_instance_uids=list(sop_instance_uids),
    )
