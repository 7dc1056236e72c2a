"""The HTTP API that ``docqueue serve`` runs: FastAPI over the :class:`Client`.

Every route calls the Client (submit, submit_many, jobs, status, cancel, delete,
results), so the API adds no second way into the ledger.  Needs the ``api`` extra
(``pip install "docqueue[api]"``); the client-only install does without it.
"""
