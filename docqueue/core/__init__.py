"""What docqueue does, apart from how it is asked: the domain the Client, the API,
the CLI and schedules share.

- ``services``: the Redis, Celery app and database one process talks to.
- ``submit`` / ``enqueue``: make a job once (idempotency, reuse) and publish its documents.
- ``publishing``: hand documents to the queue, patiently through Redis outages.
- ``jobs`` / ``documents``: read and settle what was submitted.
- ``groups``: jobs submitted together (several tasks over one input).
- ``fleet`` / ``overview``: which workers serve which models, and what waits.
- ``files`` / ``batches`` / ``batch_object``: OpenAI-style batch input files, and
  batches (create, read, cancel, expire, their output and error lines).
- ``lease``: a job being enqueued holds a lease; an expired one closes it as failed.
- ``errors``: the refusals these raise.

Nothing here parses HTTP or command lines; SQL stays in ``docqueue.db``.
"""
