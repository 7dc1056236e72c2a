"""The fingerprint of a loaded model: what a result records about the model that
made it, so that a later job reuses the result only if the same model would
compute it again (:mod:`docqueue.worker.reuse`).

A hub checkpoint is fingerprinted by its revision (the commit it was loaded at).
A local directory has none: its files (config, tokenizer, weights; top level) are
hashed.  Hashing gigabytes of weights at every start would cost seconds, so each
file's digest is cached on disk under its path, size and modification time: a
file rewritten in place gets a new mtime and is hashed again.  The dtype the
weights were loaded in is part of the fingerprint (bf16 and fp32 outputs differ),
and so is a runner plug-in that replaces the built-in one.

Only the worker can compute it: producers have no model files, and a shortcut on
their side would have to guess the model that will run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where file digests are cached (a JSON object: "path|size|mtime_ns" -> sha256).
CACHE_FILE = Path.home() / ".cache" / "docqueue" / "file-digests.json"
#: Files of a model directory that do not change what it computes.
IGNORED_SUFFIXES = (".md", ".lock")
_cache_lock = threading.Lock()


def model_fingerprint(source: str, config: Any, dtype: Any, cache: Path | None = None) -> str:
    """``rev:<commit>/<dtype>`` for a hub checkpoint, ``sha256:<digest>/<dtype>`` for
    a local directory (at most 128 characters)."""
    kind = str(dtype).removeprefix("torch.")
    commit = getattr(config, "_commit_hash", None)
    if not os.path.isdir(source) and isinstance(commit, str) and commit:
        return f"rev:{commit}/{kind}"
    return f"sha256:{directory_digest(Path(source), cache or CACHE_FILE)}/{kind}"


def runner_fingerprint(model_fingerprint: str, runner: type) -> str:
    """The fingerprint of a model as one runner uses it: a runner plug-in (any
    class outside docqueue's own runners) computes other outputs from the same
    weights, so it changes the fingerprint."""
    if runner.__module__.startswith("docqueue.worker.runners"):
        return model_fingerprint
    plugin = hashlib.sha256(f"{runner.__module__}:{runner.__qualname__}".encode()).hexdigest()
    return f"{model_fingerprint}+{plugin[:16]}"


def directory_digest(directory: Path, cache: Path) -> str:
    """SHA-256 over the names and contents of the directory's top-level files."""
    files = sorted(
        p for p in directory.iterdir() if p.is_file() and not p.name.endswith(IGNORED_SUFFIXES)
    )
    known = _read_cache(cache)
    combined = hashlib.sha256()
    fresh = {}
    for path in files:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = known.get(key)
        if digest is None:
            digest = _file_digest(path)
            fresh[key] = digest
        combined.update(f"{path.name}\0{digest}\n".encode())
    if fresh:
        _write_cache(cache, fresh)
    return combined.hexdigest()


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def _read_cache(cache: Path) -> dict[str, str]:
    try:
        loaded = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_cache(cache: Path, fresh: dict[str, str]) -> None:
    """Add digests to the cache; a cache that cannot be written only costs the
    hashing again next time.  Written to a temporary file and renamed, so two
    workers starting at once never leave a torn file."""
    with _cache_lock:
        merged = {**_read_cache(cache), **fresh}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged))
            tmp.replace(cache)
        except OSError as exc:
            log.info("could not cache model file digests in %s: %s", cache, exc)
