"""The coded concepts the output writers use, in one place, with where each comes from.

Codes that pydicom's code dictionary knows are taken from it (``codes.X.Y``); the few it lacks are
written out with their SNOMED CT / DCM identifiers. Every meaning is at most 64 characters
(highdicom refuses longer ones).
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

# Findings (TID 1501 row "Finding", and the root qualitative evaluation).
COVID_19 = Code("840539006", "SCT", "COVID-19")  # SNOMED CT: disease caused by SARS-CoV-2
COMMUNITY_ACQUIRED_PNEUMONIA = Code("385093006", "SCT", "Community acquired pneumonia")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")

# The finding each class stands for. "normal" (non-pneumonia) is reported as pneumonia, absent.
CLASS_FINDINGS: dict[str, Code] = {"covid": COVID_19, "cap": COMMUNITY_ACQUIRED_PNEUMONIA, "normal": PNEUMONIA}
CLASS_NAMES: dict[str, str] = {"covid": "COVID-19", "cap": "CAP", "normal": "non-pneumonia"}
CLASS_SHORT_NAMES: dict[str, str] = {"covid": "COVID", "cap": "CAP", "normal": "normal"}
DECISION_NAMES: dict[str, str] = {
    "covid": "COVID-19",
    "cap": "community-acquired pneumonia",
    "normal": "no pneumonia (normal)",
    "indeterminate": "indeterminate (low confidence)",
    "no_decision": "no decision",
}

# Qualitative evaluation values (CID 240 Present/Absent, CID 4220 Indeterminate).
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
INDETERMINATE = codes.SCT.Indeterminate

# The node's own codes (a private coding scheme, identified in each SR that uses it): concepts the
# standard has no code for. Viewers label a measurement with its concept's meaning only (OHIF
# shows "Probability: 0.99" three times for three classes), so each class's probability is its
# own concept, "Probability of <class>", the way DCM has "Probability of cancer" (111047). CAP
# is abbreviated: OHIF prints the classification's labels right of the box around the lungs, and
# "Probability of community-acquired pneumonia: 0.00 %" ran past the viewport's edge; the SR
# spells it out under the measurement (CLASS_PROBABILITY_IN_FULL, as TID 300's Equivalent Meaning
# of Concept Name).
PRIVATE_SCHEME = "99COVIDCT"
PRIVATE_SCHEME_NAME = "COVID-CT AI node codes"
CLASS_PROBABILITIES: dict[str, Code] = {
    "covid": Code("P-COVID", PRIVATE_SCHEME, "Probability of COVID-19"),
    "cap": Code("P-CAP", PRIVATE_SCHEME, "Probability of CAP"),
    "normal": Code("P-NORMAL", PRIVATE_SCHEME, "Probability of no pneumonia"),
}
CLASS_PROBABILITY_IN_FULL: dict[str, str] = {"cap": "Probability of community-acquired pneumonia (CAP)"}

# Concept names.
PROBABILITY = codes.DCM.Probability  # DCM 122157
VOLUME_RATIO = codes.DCM.VolumeRatio  # DCM 113288, CID 7469: infected / lung volume, in %
VOLUME = codes.SCT.Volume
AREA = codes.SCT.Area  # CID 7471 Area, of a planar ROI (TID 1410)
EQUIVALENT_MEANING = codes.DCM.EquivalentMeaningOfConceptName
SOURCE_IMAGE_FOR_SEGMENTATION = codes.DCM.SourceImageForSegmentation
IMPRESSION = codes.DCM.Impression
COMMENT = codes.DCM.Comment
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements  # TID 1500 row 6
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12

# Units (UCUM).
UNITLESS = codes.UCUM.NoUnits
PERCENT = codes.UCUM.Percent
CUBIC_CENTIMETER = codes.UCUM.CubicCentimeter
SQUARE_MILLIMETER = codes.UCUM.SquareMillimeter

# Anatomy and procedure. CID 100 (Quantitative Diagnostic Imaging Procedures) has no chest-CT code,
# so the procedure is "CT unspecified body region" and the finding site says lung.
LUNG = codes.SCT.Lung
CT_PROCEDURE = codes.cid100.CTUnspecifiedBodyRegion

# Segmentation.
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SEGMENT_TYPE = codes.SCT.Lesion
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence

# Observer type of the device observer context (TID 1002).
DEVICE_OBSERVER = codes.DCM.Device

# Key Object Selection title (CID 7010).
KOS_TITLE = codes.DCM.OfInterest

# Contributing equipment purpose.
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
