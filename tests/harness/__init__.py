"""The harness of tests/ and benchmarks/; nothing in the node imports it, and it is not part of the
installed package (it raises AssertionError, as tests do). Benchmarks run from the repository root
(``python -m benchmarks.NAME``) to find it.

:mod:`.peers` runs the node and its real peers on loopback (``dicom-node`` subprocesses, DCMTK's
storescu as the modality, Orthanc as the PACS, PostgreSQL and Redis databases); :mod:`.synthetic`
makes phantom series and hand-made results for the output writers;
:mod:`.jobs` holds a running job so that a test kills its worker mid-job. A missing peer fails with a
message that names its Debian package; nothing here skips.
"""
