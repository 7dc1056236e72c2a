"""``docqueue bench`` end to end on a few documents: the real command in a subprocess,
with its own embedded Redis and SQLite file, checked for every arm and ratio it
prints.  The numbers at these sizes mean nothing; the point is that every arm runs,
no document fails and the report is complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TIMING

pytestmark = [pytest.mark.slow, TIMING]

NUMBER = r"-?[\d,]+(?:\.\d+)?"


def run(tmp_path: Path, *args: str, timeout: float = 180) -> str:
    """Run ``python ARGS``; its output.  No DOCQUEUE_* variable reaches it, so the
    bench starts its own Redis and SQLite file; TMPDIR keeps the models it builds
    under ``tmp_path``; one torch thread, as the numbers do not matter here and two
    spinning threads crawl on 2 busy cores."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env.update(TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def arms(report: str) -> dict[str, list[str]]:
    """Table rows by arm name: the cells after the name."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith(("| (", "| sorted", "| the model alone")):
            rows[cells[0]] = cells[1:]
    return rows


def positive(cell: str) -> float:
    assert re.fullmatch(NUMBER, cell), cell
    value = float(cell.replace(",", ""))
    assert value > 0, cell
    return value


def ratios(report: str) -> dict[str, float]:
    (line,) = [x for x in report.splitlines() if x.startswith("ratios (docs/s, same run): ")]
    found = dict(re.findall(rf"(\w+/\w+) = ({NUMBER})", line))
    return {k: positive(v) for k, v in found.items()}


def test_bench_classify_every_arm_end_to_end(tmp_path: Path) -> None:
    """Arms (a) to (d) through the real command.  Left out: the latency runs, the
    single-document drain and the mixed lengths; each starts one more worker (8 to
    13 s here) and the latency runs last 10 s each at their fixed rate and count."""
    argv = ["-m", "docqueue", "bench", "--docs", "600", "--baseline-docs", "64"]
    report = run(tmp_path, *argv, "--skip", "latency,singles")
    assert "docqueue bench: classify, micro BERT classifier" in report
    assert "from pydocs-sample.jsonl (300 distinct, cycled)" in report  # the packaged corpus
    rows = arms(report)
    assert set(rows) == {
        "(a) pipeline(), one document per call",
        "(b) pipeline(batch_size=128)",
        "sorted batches, token budget (hand-written loop)",
        "the model alone: sorted batches, model calls only (the ceiling)",
        "(c) docqueue engine offline",
        "(d) docqueue end to end, steady state",
        "(d) end to end, wall time incl. worker start-up",
    }, report
    for name, cells in rows.items():
        docs, seconds, per_second, real_tokens = cells[:4]
        assert docs == ("600" if name.startswith("(d)") else "64"), name
        for cell in (seconds, per_second, real_tokens):
            positive(cell)
        assert len(cells) == 6, (name, cells)  # a seventh cell is a note of failures
    assert set(ratios(report)) == {"d/b", "d/c", "c/b", "c/sorted", "b/a", "forward/b"}, report
    assert re.search(
        rf"peak host memory: bench process \(arms a-c\) {NUMBER}; worker {NUMBER}", report
    ), report


GENERATIVE = """
from docqueue.bench import Options, run
for task in ("summarize", "generate", "translate"):
    run(Options(task=task, docs=8, baseline_docs=8, skip={"d", "latency", "mixed"}))
"""


def test_bench_generative_arms(tmp_path: Path) -> None:
    """The tiny BART, GPT-2 and Marian through the in-process arms, in one process
    (each Python start with torch costs seconds on 2 cores; the end-to-end arm is the
    same code as for classify)."""
    report = run(tmp_path, "-c", GENERATIVE)
    parts = report.split("docqueue bench: ")[1:]
    for task, part in zip(("summarize", "generate", "translate"), parts, strict=True):
        assert part.startswith(f"{task}, tiny "), part
        rows = arms(part)
        a, b = (
            ("(a) pipeline(), one document per call", "(b) pipeline(batch_size=128)")
            if task == "generate"
            else (
                "(a) Auto model, one document at a time",
                "(b) Auto model, batches of 128 in input order",
            )
        )
        assert set(rows) == {
            a,
            b,
            "sorted batches, token budget (hand-written loop)",
            "(c) docqueue engine offline",
        }, part
        for name, cells in rows.items():
            assert cells[0] == "8", name
            positive(cells[2])  # docs/s
            positive(cells[4])  # new tokens/s
            assert len(cells) == 6, (name, cells)  # a seventh cell is a note of failures
        assert set(ratios(part)) == {"c/b", "c/sorted", "b/a"}, part


ENCODERS = """
from docqueue.bench import Options, run
skip = {"a", "d", "latency", "singles"}
run(Options(task="ner", docs=6, baseline_docs=6, skip=skip))
run(Options(task="fill-mask", docs=6, baseline_docs=6, skip=skip))
run(Options(task="classify", labels=["python", "web"], docs=6, baseline_docs=6, skip=skip))
run(Options(task="rerank", docs=6, baseline_docs=6, skip=skip))
run(Options(task="answer", docs=6, baseline_docs=6, skip=skip))
"""


@pytest.mark.timeout(900)  # five MiniLM-sized models built, and a worker started for each
def test_bench_encoder_task_arms_against_their_pipelines(tmp_path: Path) -> None:
    """ner, fill-mask, zero-shot by entailment, rerank and answer on MiniLM-shaped
    random models: each against its pipeline(batch_size=128) (rerank and answer,
    which have none, against the Auto model in batches), in one process."""
    report = run(tmp_path, "-c", ENCODERS, timeout=850)
    parts = report.split("docqueue bench: ")[1:]
    tasks = ["ner", "fill-mask", "classify", "rerank", "answer"]
    assert [p.split(",")[0] for p in parts] == tasks, report
    assert "MiniLM-L6 shape NLI classifier" in parts[2]
    assert "MiniLM-L6 shape cross-encoder" in parts[3]
    assert "MiniLM-L6 shape question answering head" in parts[4]
    for part in parts:
        rows = arms(part)
        baseline = (  # transformers 5 pipelines neither: the Auto model in a plain loop
            "(b) Auto model, batches of 128 in input order"
            if part.startswith(("rerank", "answer"))
            else "(b) pipeline(batch_size=128)"
        )
        assert set(rows) == {
            baseline,
            "sorted batches, token budget (hand-written loop)",
            "the model alone: sorted batches, model calls only (the ceiling)",
            "(c) docqueue engine offline",
        }, part
        for name, cells in rows.items():
            positive(cells[2])  # docs/s
            assert len(cells) == 6, (name, cells)  # a seventh cell is a note of failures
        assert set(ratios(part)) == {"c/b", "c/sorted", "forward/b"}, part


@pytest.mark.timeout(1200)  # four cold processes, 10 s each here, minutes on a loaded machine
@pytest.mark.parametrize("task", ["classify", "embed", "summarize", "generate"])
def test_bench_whole_process_times_the_plain_script_and_annotate(tmp_path: Path, task: str):
    """Both whole-process arms at one document and a three-document file, one
    round: every cell a positive number, each ratio the quotient of its cells."""
    argv = ["-m", "docqueue", "bench", "--whole-process", "--task", task]
    report = run(tmp_path, *argv, "--docs", "3", "--rounds", "1", timeout=1200)
    assert f"docqueue bench --whole-process: {task}" in report, report
    rows = [line for line in report.splitlines() if re.match(r"\| [\d,]+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "3"], report
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")][1:]
        plain, annotate, ratio = positive(cells[0]), positive(cells[1]), cells[2]
        assert re.fullmatch(r"\d+\.\d\dx", ratio), row
        assert abs(float(ratio[:-1]) - annotate / plain) <= 0.05 * annotate / plain, row
        assert positive(cells[3]) >= plain and positive(cells[4]) >= annotate  # exit follows output


# --- the measurement scripts of BENCHMARKS.md (python -m docqueue.bench.NAME) -------------


def test_bench_bf16_compares_each_task_with_fp32(tmp_path: Path):
    report = run(tmp_path, "-m", "docqueue.bench.bf16", "--train", "64", "--test", "32")
    lines = [x for x in report.splitlines() if "identical to fp32" in x]
    assert {x.split(",")[0] for x in lines} >= {"summarize", "generate"}, report
    for line in lines:
        same, total = map(int, re.findall(r"(\d+) of (\d+) outputs identical", line)[0])
        assert 0 < same <= total == 32, line
        before, after = re.findall(rf"({NUMBER}) -> ({NUMBER}) docs/s", line)[0]
        positive(before), positive(after)


def test_bench_http_prints_added_latency_and_the_rate_ratio(tmp_path: Path):
    argv = ["--rate", "20", "--count", "20", "--seconds", "2", "--rounds", "1"]
    report = run(tmp_path, "-m", "docqueue.bench.http", *argv)
    rows = {x.split()[0]: x.split()[1:] for x in report.splitlines() if x.split()[:1]}
    for arm in ("client", "http", "added"):
        assert len(rows[arm]) == 3, report  # p50, p95, p99
    for arm in ("client", "http"):
        for cell in rows[arm]:
            positive(cell)
    (line,) = [x for x in report.splitlines() if x.startswith("round 1: HTTP")]
    assert re.search(rf"Client.submit {NUMBER}/s, ratio {NUMBER}", line), line


def test_bench_batch_ingest_compares_the_batch_file_with_submit_many(
    tmp_path: Path, redis_url: str
):
    argv = ["--lines", "200", "--rounds", "1", "--redis-url", redis_url]
    report = run(tmp_path, "-m", "docqueue.bench.batch_ingest", *argv)
    assert "SQLite: 200 lines" in report, report
    (line,) = [x for x in report.splitlines() if x.strip().startswith("round 1:")]
    rates = re.findall(rf"({NUMBER}) docs/s", line)
    assert len(rates) == 2 and all(positive(r) for r in rates), line
    assert re.search(rf"median of 1 rounds: {NUMBER}x", report), report


def test_bench_oversized_refuses_and_accepts_a_huge_message(tmp_path: Path):
    report = run(tmp_path, "-m", "docqueue.bench.oversized", "--mb", "10", timeout=300)
    refused = [x for x in report.splitlines() if x.startswith("refused")]
    assert len(refused) == 2 and all("resident memory" in x for x in refused), report
    assert "accepted and decoded" in report, report
    assert report.count("worker still serves: True") == 2, report
    assert "more than this worker accepts" in report, report
    too_small = subprocess.run(
        [sys.executable, "-m", "docqueue.bench.oversized", "--mb", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert too_small.returncode == 2 and "--mb 2: give more than 8" in too_small.stderr


def test_bench_parquet_ingest_reads_and_enqueues_within_its_budget(tmp_path: Path):
    report = run(tmp_path, "-m", "docqueue.bench.parquet_ingest", "--rows", "2000")
    for step in ("read", "enqueue"):
        (line,) = [x for x in report.splitlines() if x.strip().startswith(f"{step} ")]
        positive(re.findall(rf"({NUMBER}) docs/s", line)[0])
        assert re.search(rf"{step}: .* \(within {NUMBER} MB\)", report), report


def test_bench_reuse_computes_only_what_changed(tmp_path: Path):
    report = run(tmp_path, "-m", "docqueue.bench.reuse", "--n", "50")
    counts = re.findall(r"computed\s+(\d+)\s+reused\s+(\d+)\s+done\s+(\d+)", report)
    assert counts == [("50", "0", "50"), ("0", "50", "50"), ("5", "45", "50")], report
