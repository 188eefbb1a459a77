"""The worker side of piapi-bulk: Celery app and tasks, the PiAPI client, the database record.

Nothing here imports from `scheduler`; the dependency runs one way (scheduler -> workers).
"""
