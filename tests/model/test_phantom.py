"""model.phantoms and model.phantoms.cli: synthetic chest CT, its ground truth and its DICOM.

Covers: determinism by seed (arrays and written files, UIDs included), that the masks line up with
the drawn signs (GGO / consolidation HU under the lesion mask, lesions inside the lungs, empty for
normal), that a class changes only the lungs (anatomy, scan, noise and confounders are the same for
one seed: no shortcut outside the signs), that every class carries every confounder and that every
COVID-19 stage and CAP pattern occurs, covid mostly bilateral and peripheral vs cap deeper, the CT
Image attributes of the written files, class-balanced data sets with patients, and the two CLI
commands.
Not covered: clinical realism (a phantom proves the pipeline, nothing clinical).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from dicom_node.cli import main
from model.contract.uids import check_uid
from model.phantoms.dataset import plan_phantom_dataset, write_phantom_dataset
from model.phantoms.lesions import CAP_PATTERNS, COVID_STAGES
from model.phantoms.mix import DEFAULT, MIXES, Mix, describe_mix
from model.phantoms.phantom import Phantom, make_phantom
from model.phantoms.writer import masks_path, read_phantom_truth, write_phantom_series
from model.training.metrics import dilate_mm


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a = make_phantom("covid", seed=7, rows=64, columns=64, slices=12)
    b = make_phantom("covid", seed=7, rows=64, columns=64, slices=12)
    c = make_phantom("covid", seed=8, rows=64, columns=64, slices=12)
    assert (
        np.array_equal(a.hu, b.hu)
        and np.array_equal(a.lung_mask, b.lung_mask)
        and np.array_equal(a.lesion_mask, b.lesion_mask)
    )
    assert a.findings == b.findings
    assert not np.array_equal(a.hu, c.hu)


def test_same_seed_same_files(tmp_path: Path) -> None:
    p = make_phantom("cap", seed=3, rows=64, columns=64, slices=8)
    one = write_phantom_series(p, tmp_path / "one")
    two = write_phantom_series(p, tmp_path / "two")
    names = sorted(f.name for f in one.iterdir())
    assert names == sorted(f.name for f in two.iterdir())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes()
    other = write_phantom_series("cap", tmp_path / "other", seed=4, rows=64, columns=64, slices=8)
    uid = lambda d: pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True).SeriesInstanceUID  # noqa: E731
    assert uid(one) != uid(other)


def test_masks_line_up_with_the_signs(small_phantoms: dict[str, Phantom]) -> None:
    covid, cap, normal = small_phantoms["covid"], small_phantoms["cap"], small_phantoms["normal"]
    assert not normal.lesion_mask.any()
    for p in (covid, cap):
        assert p.lesion_mask.any()
        assert not (p.lesion_mask & ~p.lung_mask).any()
    lung_only = normal.lung_mask & (normal.hu < -500)
    ggo = np.median(covid.hu[covid.lesion_mask])
    consolidation = np.median(cap.hu[cap.lesion_mask])
    assert np.median(normal.hu[lung_only]) < -780
    assert -750 <= ggo <= -300, ggo
    assert -250 <= consolidation <= 80, consolidation
    # Air bronchograms: air inside the consolidation.
    assert np.count_nonzero(cap.lesion_mask & (cap.hu < -900)) > 0


def test_class_changes_only_the_lungs(small_phantoms: dict[str, Phantom]) -> None:
    normal = small_phantoms["normal"]
    # The kernel, the slice profile and breathing motion (a ghost from 8 mm or one slice higher)
    # spread a voxel a little: the disease may change what lies within 12 mm and a slice of the
    # lungs, nothing farther.
    near = dilate_mm(normal.lung_mask, normal.spacing, 12.0 + normal.spacing[0])
    for kind in ("covid", "cap"):
        p = small_phantoms[kind]
        changed = p.hu != normal.hu
        assert changed.any()
        assert not (changed & ~near).any(), kind
        assert (p.spacing, p.slice_thickness, p.noise_sigma, p.kvp, p.scan) == (
            normal.spacing,
            normal.slice_thickness,
            normal.noise_sigma,
            normal.kvp,
            normal.scan,
        )
        confounders = [f for f in p.findings if f.get("confounder")]
        assert confounders == [f for f in normal.findings if f.get("confounder")]


def test_covid_is_mostly_bilateral_and_peripheral_cap_is_deeper() -> None:
    covid_depth: list[float] = []
    cap_depth: list[float] = []
    bilateral = 0
    for seed in range(6):
        for kind in ("covid", "cap"):
            p = make_phantom(kind, seed=100 + seed, rows=96, columns=96, slices=32, noise=False)
            if not p.lesion_mask.any():
                continue
            depth = ndi.distance_transform_edt(p.lung_mask, sampling=p.spacing)
            d = float(np.median(depth[p.lesion_mask]))
            (covid_depth if kind == "covid" else cap_depth).append(d)
            if kind == "covid":
                sides = {f["side"] for f in p.findings if not f.get("confounder")}
                bilateral += sides == {"left", "right"}
    assert np.mean(covid_depth) < np.mean(cap_depth)
    assert bilateral >= 3


def test_confounders_and_patterns_do_not_depend_on_the_class() -> None:
    seen: dict[str, set[str]] = {"covid": set(), "cap": set(), "normal": set()}
    patterns: dict[str, set[str]] = {"covid": set(), "cap": set()}
    for seed in range(40):
        for kind in seen:
            p = make_phantom(kind, seed=seed, rows=48, columns=48, slices=12, noise=False)
            seen[kind] |= {f["type"] for f in p.findings if f.get("confounder")}
            if kind in patterns:
                patterns[kind].add(p.pattern)
    # every class carries every confounder: none of them names a class
    assert seen["covid"] == seen["cap"] == seen["normal"]
    assert {"dependent atelectasis", "small nodules", "small pleural effusion"} <= seen["normal"]
    assert patterns["covid"] == set(COVID_STAGES) and patterns["cap"] == set(CAP_PATTERNS)


def _densest_posterior_lung_edge(p: Phantom) -> float:
    """The highest per-slice median HU of each column's most posterior lung voxel, over the lower
    third of the lung slices: where dependent atelectasis lies."""
    z = np.flatnonzero(p.lung_mask.any(axis=(1, 2)))
    medians = []
    for k in z[: max(1, z.size // 3)]:
        lung = p.lung_mask[k]
        cols = np.flatnonzero(lung.any(axis=0))
        rows = lung.shape[0] - 1 - np.argmax(lung[::-1, cols], axis=0)
        medians.append(float(np.median(p.hu[k, rows, cols])))
    return max(medians)


def test_dependent_atelectasis_runs_from_faint_to_as_dense_as_consolidation_in_normal_lungs() -> None:
    """Real compressive atelectasis at the bases is often as dense as a consolidation: normals carry
    such bands too, so density at the back of a lower lobe does not name a pneumonia. The band is
    lung (in the lung mask, along its posterior edge) and not lesion."""
    bands = []
    for seed in range(30):
        p = make_phantom("normal", seed=seed, rows=64, columns=64, slices=24, noise=False)
        assert not p.lesion_mask.any()
        band = [f for f in p.findings if f["type"] == "dependent atelectasis"]
        edge = _densest_posterior_lung_edge(p)
        if not band:
            assert edge < -300.0, (seed, edge)
            continue
        bands.append(band[0]["hu"])
        if band[0]["hu"] > -150:
            assert edge > -150.0, (seed, band[0], edge)
    assert min(bands) < -400 and max(bands) > -100


def test_the_hard_mix_leans_on_dense_atelectasis_and_small_disease_and_changes_no_other_draw() -> None:
    """The 'hard' mix: more and denser dependent bands in every class, more segmental CAP and early
    COVID-19. It moves probabilities only: the scan and the patient stay those of the seed."""
    hard = MIXES["hard"]
    bands = {"default": 0, "hard": 0}
    patterns: dict[str, list[str]] = {"default": [], "hard": []}
    for seed in range(24):
        for name, mix in (("default", DEFAULT), ("hard", hard)):
            p = make_phantom("normal", seed=seed, rows=48, columns=48, slices=12, noise=False, mix=mix)
            band = [f for f in p.findings if f["type"] == "dependent atelectasis"]
            bands[name] += bool(band)
            if band and name == "hard":
                assert -300 <= band[0]["hu"] <= 20
            patterns[name].append(
                make_phantom("cap", seed=seed, rows=48, columns=48, slices=12, noise=False, mix=mix).pattern
            )
    assert bands["hard"] > bands["default"]
    assert patterns["hard"].count("segmental") > patterns["default"].count("segmental")
    a = make_phantom("covid", seed=5, rows=48, columns=48, slices=12)
    c = make_phantom("normal", seed=5, rows=48, columns=48, slices=12, mix=hard)
    assert c.scan == a.scan and c.spacing == a.spacing
    # The description (in the masks file beside a series) names the mix, so a training set's record can count them.
    assert a.describe()["mix"]["name"] == "default" and c.describe()["mix"]["name"] == "hard"
    assert c.describe()["mix"]["atelectasis_hu"] == (-300.0, 20.0)
    assert describe_mix(Mix(dependent_atelectasis=0.5))["name"] == "custom"
    with pytest.raises(ValueError, match="cap_patterns"):
        Mix(cap_patterns=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="atelectasis_hu"):
        Mix(atelectasis_hu=(20.0, -300.0))


def test_each_phantom_looks_like_its_own_synthetic_patient(tmp_path: Path) -> None:
    """Viewers group studies by patient: phantoms of two kinds with one seed are two patients, and
    the series description says synthetic, the kind and the seed."""
    seen = []
    for kind in ("covid", "cap"):
        folder = write_phantom_series(kind, tmp_path / kind, seed=7, slices=6, rows=32, columns=32, write_masks=False)
        ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
        assert ds.PatientID == f"PHANTOM-{kind.upper()}-7" and str(ds.PatientName) == f"PHANTOM^{kind.upper()}-7"
        assert ds.SeriesDescription == f"SYNTHETIC phantom {kind} seed 7 - not a patient"
        seen.append((ds.PatientID, ds.StudyInstanceUID))
    assert len({pid for pid, _ in seen}) == len({uid for _, uid in seen}) == 2
    named = write_phantom_series(
        "cap", tmp_path / "named", seed=7, slices=6, rows=32, columns=32, write_masks=False, patient_id="PHANTOM-0-0003"
    )
    ds = pydicom.dcmread(next(named.iterdir()), stop_before_pixels=True)
    assert (ds.PatientID, str(ds.PatientName)) == ("PHANTOM-0-0003", "PHANTOM^0-0003")


def test_ct_image_attributes(covid_series: Path) -> None:
    files = sorted(covid_series.iterdir())
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.BodyPartExamined == "CHEST" and ds.Modality == "CT"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    for keyword in (
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "SeriesNumber",
        "PatientPosition",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "Manufacturer",
        "InstanceNumber",
        "KVP",
        "AcquisitionNumber",
        "SliceThickness",
        "RescaleSlope",
        "RescaleType",
    ):
        assert keyword in ds, keyword
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
        assert check_uid(str(uid)) == (True, "")
    assert ds.pixel_array.shape == (128, 128)
    assert masks_path(covid_series).is_file()
    assert read_phantom_truth(covid_series).kind == "covid"


def test_dataset_is_balanced_with_patients(tmp_path: Path) -> None:
    plans = plan_phantom_dataset(12, seed=1, series_per_patient=2, slices_min=8, slices_max=10)
    kinds = [p.kind for p in plans]
    assert {k: kinds.count(k) for k in set(kinds)} == {"covid": 4, "cap": 4, "normal": 4}
    by_patient: dict[str, set[str]] = {}
    for p in plans:
        by_patient.setdefault(p.patient_id, set()).add(p.kind)
    assert len(by_patient) == 6 and all(len(v) == 1 for v in by_patient.values())
    labels = write_phantom_dataset(
        tmp_path / "ds", 3, seed=2, rows=48, slices_min=6, slices_max=6, series_per_patient=1
    )
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["covid", "cap", "normal"]
    assert all(
        (tmp_path / "ds" / r["series"]).is_dir() and masks_path(tmp_path / "ds" / r["series"]).is_file() for r in rows
    )
    assert list(rows[0]) == ["series", "label", "patient_id"]


def test_cli_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "phantom",
                str(tmp_path / "one"),
                "--kind",
                "cap",
                "--rows",
                "48",
                "--slices",
                "6",
                "--seed",
                "2",
                "--transfer-syntax",
                "rle",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "one").iterdir())) == 6
    ds = pydicom.dcmread(next((tmp_path / "one").iterdir()), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert (
        main(["phantom", str(tmp_path / "mf"), "--kind", "normal", "--rows", "48", "--slices", "6", "--multiframe"])
        == 0
    )
    assert len(list((tmp_path / "mf").iterdir())) == 1
    assert (
        main(
            [
                "phantom-dataset",
                str(tmp_path / "ds"),
                "--count",
                "2",
                "--rows",
                "48",
                "--slices-min",
                "6",
                "--slices-max",
                "6",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "ds" / "labels.csv").is_file()
    assert "not for clinical use" in capsys.readouterr().out.lower()
    assert main(["phantom-dataset", str(tmp_path / "bad"), "--count", "0"]) == 2
    cap = tmp_path / "cap"
    args = ["--count", "2", "--rows", "48", "--slices-min", "6", "--slices-max", "6", "--quiet"]
    assert main(["phantom-dataset", str(cap), "--kinds", "cap", *args]) == 0
    assert [row.split(",")[1] for row in (cap / "labels.csv").read_text().splitlines()[1:]] == ["cap", "cap"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["phantom-dataset", str(tmp_path / "flu"), "--kinds", "cap,flu", *args])
    err = capsys.readouterr().err
    assert "--kinds" in err and "'cap,flu'" in err, err
