"""The ``docqueue`` command, a module per group of commands (:mod:`docqueue.cli.main`
registers them; :mod:`docqueue.cli.options` holds what they share).

    docqueue annotate docs.jsonl --task classify --labels "billing,outage,praise" --out out.jsonl
    docqueue worker --model sentiment=/models/sst2 [--device cuda:0 | --gpus all]
    docqueue enqueue docs.jsonl --task classify --model sentiment      # prints the job id
    docqueue status JOB | docqueue status                          # a job | the queues
    docqueue export JOB --out results.jsonl
    docqueue resume JOB
    docqueue jobs [--state running|finished|cancelled|failed] [--model M] [--name N]
    docqueue cancel JOB | docqueue delete JOB | docqueue prune [--older-than DAYS]
    docqueue dead-letters list | show ID | purge [ID...] [--all] | replay [ID...] [--all]
    docqueue schedule list | run NAME | beat
    docqueue serve [--host 127.0.0.1] [--port 8000] [--workers N]     # the HTTP API

Errors are reported as one line on stderr and an exit code, never a traceback; the
exit codes are :class:`docqueue.errors.ExitCode`.
"""

from docqueue.cli.main import app, main

__all__ = ["app", "main"]
