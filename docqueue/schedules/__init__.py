"""Scheduled pipelines: Celery beat runs schedules declared in a TOML file, each
annotating what is new in a source (a directory, or a table of the user's own
database) and writing the results back to a table the user names."""
