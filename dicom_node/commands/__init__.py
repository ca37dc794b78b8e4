"""The node's sub-commands of ``dicom-node``, one module per group; each module has
``register(subparsers)``, which dicom_node.cli calls.

- :mod:`.database`: ``db upgrade``, ``db reindex``
- :mod:`.aes`: ``ae add-local | update-local | add-source | add-destination | remove | list``
- :mod:`.activity`: ``series list``, ``jobs list | retry | export``
- :mod:`.run`: ``serve`` and ``up`` (everything on one machine)

:mod:`.common` holds what they share (settings, the database, failures). Imports are at the top,
except the listeners' and the admin app's (pynetdicom, FastAPI), taken inside ``serve`` and ``up``
so that the other commands start quickly.
"""
