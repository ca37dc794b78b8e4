"""The weakly supervised COVID-19 / CAP / normal chest CT model (Hu et al., IEEE Access 2020).

Knows nothing of DICOM networking or Celery: it takes a series (a folder of DICOM files or a loaded
volume) and returns a :class:`model.contract.result.SeriesResult`. Not for clinical use.
"""
