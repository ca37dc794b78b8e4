"""Run the validators nobody here wrote (dicom3tools' dciodvfy, pixelmed's DicomSRValidator and
DicomInstanceValidator, DCMTK's dsrdump) and sort their messages into known disagreements and
everything else.

A missing tool raises AssertionError naming its Debian package: the tests fail, never skip.

Known disagreements are messages of the 2022 Debian builds about items the current standard
requires or allows (or about items it does not require). Each has a name, the exact message
pattern, where it may occur, and the section of the standard that decides. Every other message
is a failure.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.harness.peers import require_tool

PIXELMED_JARS = (
    "/usr/share/java/pixelmed.jar",
    "/usr/share/java/commons-codec.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-simple.jar",
)
# pixelmed's documented validator command line, plus -XX:TieredStopAtLevel=1 (C1 JIT
# only: the same validation for 40 % less CPU in these short runs).
PIXELMED_JAVA_FLAGS = (
    "-XX:TieredStopAtLevel=1",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
TOOL_TIMEOUT_S = 300


@dataclass(frozen=True)
class KnownDisagreement:
    """A validator message that is expected, with the reason."""

    name: str
    tool: str  # "dciodvfy", "pixelmed-sr" or "pixelmed-iod"
    pattern: re.Pattern[str]
    why: str


DCIODVFY_CONTRIBUTING_DEVICE_UID = KnownDisagreement(
    name="dciodvfy-2022: Device UID in the Contributing Equipment Sequence",
    tool="dciodvfy",
    pattern=re.compile(
        r"^Warning - (Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID"
        r"|Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP "
        r"Class)\s*$"
    ),
    why=(
        "PS3.3 C.12.1 (SOP Common Module, Table C.12-1): the Contributing Equipment Sequence item has "
        "Device UID (0018,1002), Type 3, in the current standard (highdicom 0.28's module tables list it); "
        "IHE AIR asks for the algorithm's Device UID there. dicom3tools' 2022 tables predate it (a warning)."
    ),
)

DCIODVFY_PARAMETRIC_MAP_QUANTITY = KnownDisagreement(
    name="dciodvfy-2022: QUANTITY as the derived pixel contrast of a Parametric Map",
    tool="dciodvfy",
    pattern=re.compile(
        r"^Warning - Unrecognized defined term <QUANTITY> for value 4 of attribute <(Image|Frame) Type>\s*$"
    ),
    why=(
        "Value 4 of Image Type and Frame Type of a Parametric Map is its Derived Pixel Contrast; highdicom 0.28 "
        "writes QUANTITY for one whose pixels are a measured quantity (its DerivedPixelContrastValues list it, "
        "as the current defined terms do), which is what a heatmap score is. dicom3tools' 2022 list of defined "
        "terms lacks it (a warning)."
    ),
)

DCIODVFY_SC_IMAGE_PLANE = KnownDisagreement(
    name="dciodvfy-2022: Frame of Reference and Image Plane in a Secondary Capture image",
    tool="dciodvfy",
    pattern=re.compile(
        r"^Warning - Attribute is not present in standard DICOM IOD - \(0x00(18,0x0050\) DS Slice Thickness"
        r"|20,0x0032\) DS Image Position \(Patient\)|20,0x0037\) DS Image Orientation \(Patient\)"
        r"|20,0x0052\) UI Frame of Reference UID|20,0x1040\) LO Position Reference Indicator)\s*$"
    ),
    why=(
        "PS3.3 A.8.1 (Secondary Capture Image IOD) has the Frame of Reference Module (C: required when the "
        "Image Plane Module is present) and the Image Plane Module (U) in the current standard (highdicom 0.28's "
        "IOD tables list both); the overlays carry them so viewers sync them with the CT. dicom3tools' 2022 "
        "tables predate them (warnings)."
    ),
)

DCIODVFY_PRIVATE_CODING_SCHEME = KnownDisagreement(
    name="dciodvfy-2022: the node's private coding scheme in the SR",
    tool="dciodvfy",
    pattern=re.compile(
        r"^Warning - Unrecognized defined term <99COVIDCT> for value 1 of attribute <Coding Scheme Designator>\s*$"
    ),
    why=(
        "PS3.3 8.1 and 8.2: Coding Scheme Designator (0008,0102) takes Defined Terms, and a private coding "
        "scheme has a designator beginning with '99', identified in the Coding Scheme Identification Sequence "
        "(0008,0110) of the instance (the SR has one item for 99COVIDCT). The class probabilities use it "
        "('Probability of COVID-19', ...): the standard has no per-class probability concept, and viewers print "
        "only a measurement's concept. dciodvfy warns about any designator outside its list."
    ),
)

# The image-level group is always the first group of Imaging Measurements: content item 1.8.1.
_IMAGE_GROUP = r"1\.8\.1"
PIXELMED_ONE_TEMPLATE_PER_CONTAINER = KnownDisagreement(
    name="pixelmed-2022: one measurement-group template for all groups of Imaging Measurements",
    tool="pixelmed-sr",
    pattern=re.compile(
        r"^(Error: Template (1410 PlanarROIMeasurements|1411 VolumetricROIMeasurements)/\[Row 1\] CONTAINER "
        r"\(125007,DCM,\"Measurement Group\"\)"
        r"/\[Row (5|7|8|10)\] [A-Z0-9]+ \((111030|121191|121214|121231|121233),DCM,\"[^\"]+\"\): within 1\.8\.\d+: .*"
        r": (Missing conditional content item|Conditional content item present when condition not satisfied)"
        r"|Warning: " + _IMAGE_GROUP + r"(\.\d+)+: .*: Content Item not in template)$"
    ),
    why=(
        "PS3.16 TID 1500 rows 7-9 include TID 1410, TID 1411 and TID 1501 measurement groups side by side "
        "(each 1-n) in Imaging Measurements; each finding here has a TID 1411 and a TID 1410 group. Pixelmed's "
        "2022 TID 1500 picks one of TID 1410 and TID 1411 for all groups of the container and checks every group "
        "against it: the image-level TID 1501 group (content item 1.8.1) misses that template's ROI references "
        "(image region, referenced segment or segmentation frame, volume surface) and its TID 1501 items are "
        "'not in template' (with the spatial coordinates its measurements are inferred from); the groups of the "
        "other ROI template miss, or have outside their condition, the ROI references that set them apart. Only "
        "those ROI-reference rows may be reported, and 'not in template' only within the image-level group."
    ),
)
PIXELMED_TID1501_QUALITATIVE_EVALUATION = KnownDisagreement(
    name="pixelmed-2022: qualitative evaluation in TID 1501",
    tool="pixelmed-sr",
    pattern=re.compile(
        r"^Warning: " + _IMAGE_GROUP + r"\.\d+: /CONTAINER \(126000,DCM,\"Imaging Measurement Report\"\)"
        r"/CONTAINER \(126010,DCM,\"Imaging Measurements\"\)/CONTAINER \(125007,DCM,\"Measurement Group\"\)"
        r"/CODE \((840539006|385093006|233604007),SCT,\"[^\"]+\"\): Content Item not in template$"
    ),
    why=(
        "PS3.16 TID 1501 'Measurement and Qualitative Evaluation Group' has coded qualitative evaluations "
        "(CONTAINS CODE, concept $QualType) next to the measurements; highdicom 0.28 writes them there "
        "(MeasurementsAndQualitativeEvaluations). Pixelmed's 2022 TID 1501 ('MeasurementGroup') has no such row."
    ),
)
PIXELMED_GENERAL_SERIES_LATERALITY = KnownDisagreement(
    name="pixelmed-2022: General Series Laterality demanded without a paired body part",
    tool="pixelmed-iod",
    pattern=re.compile(r"^Error: GeneralSeriesModule/Laterality/: : Missing conditional attribute$"),
    why=(
        "PS3.3 C.7.3.1 (General Series Module): Laterality (0020,0060) is Type 2C, required only if the body "
        "part examined is a paired structure and Image/Frame Laterality are absent. The SEG covers the chest "
        "(both lungs). Pixelmed 2022 asks for it whenever Image and Frame Laterality are absent; dciodvfy "
        "reports an error if it is present without its condition (tested)."
    ),
)
PIXELMED_IOD_UNRECOGNIZED = KnownDisagreement(
    name="pixelmed-2022: DicomInstanceValidator has no rules for this SOP class",
    tool="pixelmed-iod",
    pattern=re.compile(r"^IOD \(SOP Class\) unrecognized$"),
    why=(
        "Pixelmed's 2022 DicomInstanceValidator has IOD rules only for Enhanced/Legacy Converted CT and MR, "
        "MR Spectroscopy, Raw Data and Segmentation; for Secondary Capture and Key Object Selection it says "
        "'IOD (SOP Class) unrecognized' and checks nothing. SC is checked by dciodvfy, KOS by dciodvfy and "
        "DicomSRValidator (TID 2010)."
    ),
)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's error and warning lines for one file. dicom3tools' Debian build does not read
    Deflated Explicit VR Little Endian (the node's SEG and Parametric Map): such a file is first
    inflated by DCMTK's dcmconv into Explicit VR Little Endian, the same data set."""
    tool = require_tool("dciodvfy", "dicom3tools")
    if (
        str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        == DeflatedExplicitVRLittleEndian
    ):
        inflated = path.with_name(f"{path.stem}.inflated.dcm")
        proc = _run([require_tool("dcmconv", "dcmtk"), "+te", str(path), str(inflated)])
        assert proc.returncode == 0, f"dcmconv could not inflate {path.name}: {proc.stderr}"
        path = inflated
    proc = _run([tool, str(path)])
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line.rstrip() for line in lines if line.startswith(("Error", "Warning"))]


def pixelmed_command(validator: str, path: Path) -> list[str]:
    """The documented pixelmed command line for ``validator`` ("sr" or "iod")."""
    java = require_tool("java", "default-jre-headless (and pixelmed-apps)")
    for jar in PIXELMED_JARS:
        if not Path(jar).exists():
            raise AssertionError(f"{jar} is missing: the pixelmed validators need the Debian package pixelmed-apps")
    main = (
        "com.pixelmed.validate.DicomSRValidator"
        if validator == "sr"
        else "com.pixelmed.validate.DicomInstanceValidator"
    )
    options = ["-checktemplateid"] if validator == "sr" else []
    return [java, *PIXELMED_JAVA_FLAGS, "-cp", ":".join(PIXELMED_JARS), main, *options, str(path)]


def pixelmed(validator: str, path: Path) -> list[str]:
    """Pixelmed's output lines for one file (SLF4J start-up noise dropped). Raises AssertionError
    if the validator did not finish (no 'IOD validation complete' and no 'unrecognized')."""
    proc = _run(pixelmed_command(validator, path))
    lines = [
        line.rstrip()
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and not line.startswith("SLF4J")
    ]
    finished = any(line in ("IOD validation complete", "IOD (SOP Class) unrecognized") for line in lines)
    if not finished:
        raise AssertionError(f"pixelmed {validator} validator did not finish on {path.name}: {lines[-20:]}")
    return lines


def pixelmed_messages(lines: list[str]) -> list[str]:
    """The lines that say something about the object (errors, warnings, 'unrecognized')."""
    return [line for line in lines if line.startswith(("Error", "Warning")) or line == "IOD (SOP Class) unrecognized"]


def dsrdump(path: Path) -> tuple[int, str, str]:
    """``dsrdump -Ec``: (exit status, stdout, stderr). Encoding errors go to stderr."""
    tool = require_tool("dsrdump", "dcmtk")
    proc = _run([tool, "-Ec", str(path)])
    return proc.returncode, proc.stdout, proc.stderr


def unexplained(messages: list[str], known: tuple[KnownDisagreement, ...]) -> list[str]:
    """The messages that no known disagreement explains."""
    return [m for m in messages if not any(k.pattern.match(m) for k in known)]


_TEMPLATE_ERROR = re.compile(r"^Error: Template (\d+) .* within 1\.8\.(\d+): ")


def misapplied_templates(path: Path, messages: list[str]) -> list[str]:
    """The PIXELMED_ONE_TEMPLATE_PER_CONTAINER errors that concern a group of the template pixelmed
    applied (it may only flag groups of another template): should be none."""
    ds = pydicom.dcmread(path)
    container = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    templates = [str(g.ContentTemplateSequence[0].TemplateIdentifier) for g in container.ContentSequence]
    wrong = []
    for message in explained_by(messages, PIXELMED_ONE_TEMPLATE_PER_CONTAINER):
        match = _TEMPLATE_ERROR.match(message)
        if match and templates[int(match.group(2)) - 1] == match.group(1):
            wrong.append(message)
    return wrong


def explained_by(messages: list[str], disagreement: KnownDisagreement) -> list[str]:
    return [m for m in messages if disagreement.pattern.match(m)]
