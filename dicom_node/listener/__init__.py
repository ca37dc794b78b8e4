"""Receiving: the DICOM listeners (C-STORE SCP), one pynetdicom server per enabled local AE.

- :mod:`.servers`: listener processes, one server per local AE, kept in step with the database
- :mod:`.scp`: the C-ECHO and C-STORE handlers (:class:`~.scp.Receiver`: check, store, index)
- :mod:`.header`: a fast reader of the attributes kept, straight from the received bytes
- :mod:`.fastlane`: C-STORE-RQ handled in the DUL thread (command-set codec, PDVs)
- :mod:`.reactor`: the one module that reaches inside pynetdicom (event-driven DUL and
  association threads, the fast lane's hook); tests/listener/test_pynetdicom_seam.py pins what
  it relies on

Knows nothing of Celery or of the model: an instance is stored and indexed (dicom_node.storage),
and series completion (dicom_node.jobs) takes it from there.
"""
