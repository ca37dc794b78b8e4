"""What the viewer tests look at: phantom studies analysed by a real node (``dicom-node up`` with
the shipped model), the CT sent by DCMTK's storescu to the node and to an Orthanc, the node sending
its results (SR, SC, SEG, KOS, Parametric Map) to that Orthanc; each study with its phantom's
ground truth (lung and lesion masks) and geometry, to compare with screenshots."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom

from dicom_node.db.models import Job
from model.phantoms.writer import read_phantom_truth
from tests.e2e.stack import Node, done_and_exported, series_uids
from tests.harness.peers import Orthanc, storescu
from tests.harness.synthetic import clear_phantom

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"
# Small phantoms, so that the suite stays within minutes on 2 CPU cores: 256 x 256, and 64 slices
# 5 mm apart centred on the lungs (320 mm). 5 mm is the thickest slice the model is trained for; the
# whole scan range in fewer slices made slices of 10-20 mm, which no chest CT is read at.
SLICES, SLICE_SPACING, MATRIX = 64, 5.0, 256
# A pixel of a screenshot is coloured when its channels differ this much (the CT is grey).
COLOURED = 60


@dataclass
class Slice:
    sop_uid: str
    position: np.ndarray  # Image Position (Patient), mm


@dataclass
class Study:
    name: str
    kind: str
    study_uid: str
    decision: str
    regions: int  # suspected-infection regions of the result
    slices: list[Slice]  # ascending along the normal, as the masks
    row_direction: np.ndarray  # Image Orientation (Patient): along a row (column index grows)
    column_direction: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns) mm
    lungs: np.ndarray  # bool (slices, rows, columns)
    lesions: np.ndarray
    job: dict[str, Any]  # the node's job (dicom_node.jobs.queries.job_dict)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    def slice_at(self, world: Any) -> int:
        """The index of the slice nearest to a world point (along the normal)."""
        along = [float(np.dot(self.normal, s.position)) for s in self.slices]
        return int(np.argmin(np.abs(np.array(along) - float(np.dot(self.normal, np.asarray(world, dtype=float))))))

    def voxel_at(self, world: Any) -> tuple[int, int, int]:
        """(slice, row, column) of the voxel nearest to a world point."""
        k = self.slice_at(world)
        offset = np.asarray(world, dtype=float) - self.slices[k].position
        row = int(round(float(np.dot(offset, self.column_direction)) / self.spacing[0]))
        column = int(round(float(np.dot(offset, self.row_direction)) / self.spacing[1]))
        return k, row, column

    def index_of(self, sop_uid: str) -> int:
        return next(i for i, s in enumerate(self.slices) if s.sop_uid == sop_uid)


def read_study(name: str, kind: str, folder: Path, job: dict[str, Any], regions: int) -> Study:
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    first = datasets[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    datasets.sort(key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    truth = read_phantom_truth(folder)
    assert truth.lung_mask.shape[0] == len(datasets)
    return Study(
        name=name,
        kind=kind,
        study_uid=str(first.StudyInstanceUID),
        decision=str(job["decision"]),
        regions=regions,
        slices=[
            Slice(str(ds.SOPInstanceUID), np.array([float(v) for v in ds.ImagePositionPatient])) for ds in datasets
        ],
        row_direction=orientation[:3],
        column_direction=orientation[3:],
        spacing=(float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
        lungs=truth.lung_mask,
        lesions=truth.lesion_mask & truth.lung_mask,
        job=job,
    )


@contextmanager
def analysed_studies(
    tmp: Path, orthanc: Orthanc, phantoms: dict[str, tuple[str, int, bool]]
) -> Iterator[dict[str, Study]]:
    """A node sending its results to ``orthanc`` and every phantom (name -> (kind, seed, instance
    numbers descending from the feet)) written, sent to ``orthanc`` (as the scanner would) and to
    the node, analysed and exported; the node runs until the block ends."""
    node = Node(tmp)
    node.configure([(orthanc.aet, orthanc.dicom_port)])
    studies: dict[str, Study] = {}
    try:
        # A busy CI machine may take minutes to start the node (the model, the database).
        node.start("up", "--shutdown-seconds", "5").wait_for_port(node.port, timeout=360)
        folders = {}
        for name, (kind, seed, descending) in phantoms.items():
            # File names follow the instance numbers: storescu sends instance 1 first.
            folder = clear_phantom(
                kind, tmp / name, seed, slices=SLICES, rows=MATRIX, slice_spacing=SLICE_SPACING,
                reverse_instance_numbers=descending, shuffle_file_names=False,
            )  # fmt: skip
            sent = storescu(folder, orthanc.dicom_port, called=orthanc.aet)
            assert sent.returncode == 0, sent.stderr
            node.send(folder)
            folders[name] = folder
        for name, folder in folders.items():
            _, series_uid = series_uids(folder)
            job = node.wait(done_and_exported(series_uid), 420, f"the {name} job to be done and exported")
            with node.db.session() as s:
                row = s.get(Job, job["id"])
                assert row is not None
                regions = len((row.result or {}).get("regions") or [])
            studies[name] = read_study(name, phantoms[name][0], folder, job, regions)
        yield studies
    finally:
        node.stop()


def coloured(rgb: np.ndarray) -> np.ndarray:
    return np.asarray((rgb.max(axis=2) - rgb.min(axis=2)) > COLOURED)


def on_canvas(mask: np.ndarray, mapping: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A slice's mask (rows, columns) drawn on a canvas of ``shape`` with ``mapping`` (a 2 x 3
    affine from (column, row) to canvas pixels): each canvas pixel takes the value of the voxel under
    its centre."""
    height, width = shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(float) + 0.5
    inverse = np.linalg.inv(mapping[:, :2])
    dx, dy = xs - mapping[0, 2], ys - mapping[1, 2]
    column = np.rint(inverse[0, 0] * dx + inverse[0, 1] * dy).astype(int)
    row = np.rint(inverse[1, 0] * dx + inverse[1, 1] * dy).astype(int)
    inside = (row >= 0) & (row < mask.shape[0]) & (column >= 0) & (column < mask.shape[1])
    out = np.zeros((height, width), dtype=bool)
    out[inside] = mask[row[inside], column[inside]]
    return out
