"""A viewer to look at the node's results as a radiologist does: Orthanc (Debian's ``orthanc`` and
``orthanc-dicomweb``) as the PACS and the OHIF viewer (the npm package ``@ohif/app``, its built app
in ``dist/``) served on one origin with Orthanc's DICOMweb API behind it.

- :mod:`.ohif`: fetch the OHIF package once with npm into a cache folder, and its ``app-config.js``;
- :mod:`.proxy`: the one HTTP server: OHIF's files, ``/dicom-web/...`` passed on to Orthanc, and
  ``index.html`` for the viewer's own routes;
- :mod:`.orthanc`: a private Orthanc with the DICOMweb plugin.

``dicom-node viewer`` (dicom_node/commands/viewer.py) starts both for the one-machine demo; the
browser test (tests/viewer) uses the same pieces. Research software, not for clinical use.
"""
