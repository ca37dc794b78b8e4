"""COVID-CT AI node: receive chest CT over DICOM, analyse it, send results back to PACS.

Not for clinical use.
"""

__version__ = "0.1.0"
