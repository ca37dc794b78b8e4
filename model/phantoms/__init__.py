"""Synthetic chest CT phantoms: :mod:`.phantom` (the volume and its ground truth, built from
:mod:`.anatomy` and :mod:`.lesions`), :mod:`.writer` (as DICOM), :mod:`.dataset` (labelled data
sets of phantoms) and :mod:`.cli` (``dicom-node phantom``, ``phantom-dataset``).
Not for clinical use.
"""
