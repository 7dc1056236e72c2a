"""``docqueue bench``: docqueue beside hand-written pipeline() loops, a soak, or the
whole-process comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from docqueue.cli.options import TaskOpt, settings_or_exit, start_logging
from docqueue.errors import ExitCode


def bench(
    task: TaskOpt = "classify",
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
    shape: Annotated[
        str | None, typer.Option("--shape", help="micro, tiny (CPU) or standard (GPU)")
    ] = None,
    docs: Annotated[
        int | None,
        typer.Option("--docs", help="Documents for (c) and (d) [20,000]; with --soak [100,000]"),
    ] = None,
    baseline_docs: Annotated[
        int | None, typer.Option("--baseline-docs", help="Documents for (b) and (c)")
    ] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="JSONL with a text field")] = None,
    latency_bulk: Annotated[int, typer.Option("--latency-bulk")] = 50_000,
    singles: Annotated[int, typer.Option("--singles")] = 20_000,
    skip: Annotated[
        str,
        typer.Option("--skip", help="Comma list of a,b,sorted,forward,c,d,latency,singles,mixed"),
    ] = "",
    soak: Annotated[
        bool,
        typer.Option(
            "--soak",
            help="Instead: short documents through CPU workers with the micro classifier; "
            "prints docs/s, each worker's memory and the one-row-per-document check",
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes for --soak")] = 2,
    whole_process: Annotated[
        bool,
        typer.Option(
            "--whole-process",
            help="Instead: the plain script a user would write against docqueue annotate, "
            "each a fresh process timed to its output file, at one document and a whole "
            "file (--docs), medians of --rounds interleaved runs",
        ),
    ] = False,
    rounds: Annotated[int, typer.Option("--rounds", help="Runs per arm for --whole-process")] = 5,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="With classify: zero-shot labels (a,b,c) on an NLI model, against "
            'pipeline("zero-shot-classification")',
        ),
    ] = None,
) -> None:
    """Benchmark docqueue against hand-written pipeline() loops, side by side."""
    from docqueue.bench import DEFAULT_CORPUS, Options, load_corpus
    from docqueue.bench import run as run_bench

    start_logging("WARNING")
    if whole_process:
        import tempfile

        from docqueue.bench import wholeprocess
        from docqueue.worker.dtype import whole_process_dtype

        settings = settings_or_exit()
        wholeprocess.run(
            task,
            Path(tempfile.gettempdir()) / "docqueue-bench" / "whole-process",
            load_corpus(corpus or DEFAULT_CORPUS),
            whole_file=docs,
            rounds=rounds,
            dtype=whole_process_dtype(task, settings.dtype),
            threads=settings.torch_threads,
        )
        return
    if soak:
        from docqueue.bench import soak as soak_bench

        held = soak_bench.run(settings_or_exit(), 100_000 if docs is None else docs, workers)
        raise typer.Exit(ExitCode.OK if held else ExitCode.SOME_FAILED)
    run_bench(
        Options(
            task=task,
            device=device,
            shape=shape,
            docs=20_000 if docs is None else docs,
            baseline_docs=baseline_docs,
            corpus=corpus,
            latency_bulk=latency_bulk,
            singles=singles,
            skip={s.strip() for s in skip.split(",") if s.strip()},
            settings=settings_or_exit(),
            labels=[s.strip() for s in labels.split(",") if s.strip()] if labels else None,
        )
    )
