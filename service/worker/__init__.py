"""Celery workers for batch labeling jobs (`discoseg worker`)."""
