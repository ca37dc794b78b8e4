"""Celery workers: run the model on complete series and send the results to PACS."""
