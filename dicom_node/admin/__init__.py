"""The admin web pages and REST API of the node (FastAPI, served by ``dicom-node serve``).

Layout: :mod:`.app` assembles the application (``create_app(settings, db)``); :mod:`.server` runs
it in a thread of the serve process; :mod:`.auth` holds users, passwords, API tokens, sessions and
CSRF tokens; :mod:`.audit` the audit log; :mod:`.kinds` describes the configuration objects
(local AEs, sources, destinations) once for the API and the pages; :mod:`.activity` reads series,
jobs and exports, retries and re-sends, and renders previews; :mod:`.health` and :mod:`.metrics`
are the checks (the C-ECHO test is dicom_node.sending.echo's); :mod:`.api` the REST routes,
:mod:`.pages` the server-rendered pages; :mod:`.cli` the ``dicom-node admin`` sub-commands.

Changes go through :mod:`dicom_node.configuration` (the one home of the schemas) and reach the
listener processes through the database, which they re-read every second; job actions go through
:mod:`dicom_node.jobs`.

Nothing here imports FastAPI at package import time, so the CLI stays fast.
"""
