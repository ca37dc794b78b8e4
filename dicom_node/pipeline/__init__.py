"""The work done for a job, whatever runs it: :mod:`.analyse` (series -> model -> artefacts ->
DONE), :mod:`.export` (artefacts -> destinations) and the :mod:`.runtime` one worker process keeps
between jobs (settings, database, the predictor loaded once). worker/ calls these from Celery
tasks; tests call them directly.
"""
