"""Reuse: a job with reuse on copies the results of earlier documents with the same
text, task, model fingerprint and parameters, through a real worker; a changed text
or a changed model is computed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from docqueue.db.schema import Result
from docqueue.worker.fingerprint import directory_digest, model_fingerprint, runner_fingerprint
from docqueue.worker.runners.classify import ClassifyRunner


def _docs(sample_texts: list[str], n: int, changed: set[int] = frozenset()) -> list[tuple]:  # type: ignore[assignment]
    return [
        (
            f"d{i}",
            f"{sample_texts[i % len(sample_texts)]} #{i}" + (" (edited)" if i in changed else ""),
        )
        for i in range(n)
    ]


def _computed_seqs(client, job_id: str) -> list[int]:
    with client.db.connect() as conn:
        return list(
            conn.execute(
                select(Result.seq)
                .where(Result.job_id == job_id, Result.reused.is_(False))
                .order_by(Result.seq)
            ).scalars()
        )


def _answers(job) -> list[tuple]:
    return [(r["id"], r["status"], r["label"], r["scores"]) for r in job.results()]


def test_reuse_copies_what_is_unchanged_and_computes_exactly_the_changed_documents(
    client, start_worker, tiny_classifier, sample_texts
):
    start_worker({"tiny": tiny_classifier})
    n = 60
    first = client.submit_many(_docs(sample_texts, n), task="classify", model="tiny", reuse=True)
    assert first.wait(timeout=60).reused == 0
    again = client.submit_many(_docs(sample_texts, n), task="classify", model="tiny", reuse=True)
    progress = again.wait(timeout=60)
    assert (progress.done, progress.reused) == (n, n)
    assert _answers(again) == _answers(first)
    assert _computed_seqs(client, again.id) == []
    assert again.status().computed == 0  # copies are not counted as computed

    changed = set(range(0, n, 10))  # 10%
    edited = client.submit_many(
        _docs(sample_texts, n, changed), task="classify", model="tiny", reuse=True
    )
    progress = edited.wait(timeout=60)
    assert (progress.done, progress.reused) == (n, n - len(changed))
    assert _computed_seqs(client, edited.id) == sorted(changed)

    plain = client.submit_many(_docs(sample_texts, 20), task="classify", model="tiny")
    assert plain.wait(timeout=60).reused == 0
    assert plain.info().reuse is False


@pytest.mark.slow
def test_another_model_under_the_same_name_recomputes(
    client, start_worker, tiny_classifier, sample_texts, tmp_path
):
    """A worker serving other weights under the same name has another fingerprint:
    nothing of the first model's results is copied."""
    from docqueue.testing import build_classifier

    worker = start_worker({"tiny": tiny_classifier})
    docs = _docs(sample_texts, 50)
    client.submit_many(docs, task="classify", model="tiny", reuse=True).wait(timeout=60)
    worker.kill()
    retrained = str(build_classifier(tmp_path / "retrained", sample_texts, seed=1))
    start_worker({"tiny": retrained})
    job = client.submit_many(docs, task="classify", model="tiny", reuse=True)
    assert job.wait(timeout=60).reused == 0
    assert _computed_seqs(client, job.id) == list(range(50))


def test_a_fingerprint_follows_the_files_and_the_dtype(tmp_path: Path, tiny_classifier):
    import shutil

    cache = tmp_path / "digests.json"
    copy = Path(shutil.copytree(tiny_classifier, tmp_path / "model"))
    first = model_fingerprint(str(copy), None, "torch.float32", cache=cache)
    assert first.startswith("sha256:") and first.endswith("/float32") and len(first) <= 128
    assert model_fingerprint(str(copy), None, "torch.float32", cache=cache) == first
    assert model_fingerprint(str(copy), None, "torch.bfloat16", cache=cache) != first
    assert cache.exists()  # the digests are cached by path, size and mtime
    (copy / "README.md").write_text("notes do not change what the model computes")
    assert model_fingerprint(str(copy), None, "torch.float32", cache=cache) == first
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(str(copy), None, "torch.float32", cache=cache) != first
    assert directory_digest(copy, cache) == directory_digest(copy, tmp_path / "other.json")


def test_a_hub_checkpoint_is_fingerprinted_by_its_revision_and_a_plugin_changes_it():
    class Config:
        _commit_hash = "0" * 40

    assert model_fingerprint("org/model", Config(), "torch.float16") == f"rev:{'0' * 40}/float16"

    class Plugin(ClassifyRunner):
        pass

    assert runner_fingerprint("rev:x/float16", ClassifyRunner) == "rev:x/float16"
    assert runner_fingerprint("rev:x/float16", Plugin).startswith("rev:x/float16+")
