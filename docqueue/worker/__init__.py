"""The worker side: Celery worker, batching, runners.  Needs the ``worker`` extra."""
