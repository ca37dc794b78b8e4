"""The admin web pages and REST API of the node (FastAPI, served by ``dicom-node serve``).

Layout: :mod:`.app` assembles the application (``create_app(settings, db)``); :mod:`.server` runs
it in a thread of the serve process; :mod:`.auth` holds users, passwords, API tokens, sessions and
CSRF tokens; :mod:`.audit` the audit log; :mod:`.kinds` describes the configuration objects
(local AEs, sources, destinations) once for the API and the pages; :mod:`.jobs` reads series,
jobs and exports and renders previews; :mod:`.health`, :mod:`.metrics` and :mod:`.echo` are the
checks; :mod:`.api` the REST routes, :mod:`.pages` the server-rendered pages; :mod:`.cli` the
``dicom-node admin`` sub-commands.

Changes go through :mod:`dicom_node.configuration` (the one home of the schemas) and reach the
listener processes through the database, which they re-read every second.

Nothing here imports FastAPI at package import time, so the CLI stays fast.
"""
