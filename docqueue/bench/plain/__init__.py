"""The plain scripts a user would write instead of ``docqueue annotate``: the
whole-process arms of ``docqueue bench --whole-process`` run them as scripts
(``python plain/classify.py``), so they import nothing of docqueue.

Each takes ``MODEL INPUT.jsonl OUTPUT.jsonl THREADS DTYPE`` and the task's
parameters, reads every line's ``text``, and writes one JSON line per document."""
