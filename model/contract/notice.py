"""The "not for clinical use" statement, written once.

Every notice the node and the model print, store or encode into DICOM is built here from one
phrase, so that none can drift from the others.
"""

from __future__ import annotations

_PHRASE = "not for clinical use"

# Command-line output, JSON documents, the admin pages.
NOT_FOR_CLINICAL_USE = f"{_PHRASE.capitalize()}."
# Every DICOM object the node writes (SR comment, KOS description, contributing equipment).
DICOM_NOTICE = f"{_PHRASE.upper()}: research software, results unverified."
# A weights folder's metadata.json.
WEIGHTS_NOTICE = f"{_PHRASE.capitalize()}: trained on synthetic phantoms; proves the pipeline, nothing clinical."
# An evaluation report.
EVALUATION_NOTICE = (
    f"{NOT_FOR_CLINICAL_USE} Results on synthetic phantoms prove the pipeline works; they prove nothing clinical."
)
# A phantom's description and its DICOM Image Comments.
PHANTOM_NOTICE = f"Synthetic phantom, not a patient. {NOT_FOR_CLINICAL_USE}"
