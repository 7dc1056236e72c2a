"""The dtype a model's weights are loaded in, and why.

``DOCQUEUE_DTYPE=auto`` (the default) picks:

* on a GPU: bfloat16 where the GPU supports it, else float16;
* on a CPU with native bf16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in its
  flags: Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later):
  bfloat16 for encoders (embed, classify), whose outputs stay within cosine
  0.9999 of fp32 and whose labels agree with fp32 (``python -m
  docqueue.bench.bf16``, figures in BENCHMARKS.md), NLI classifiers among them
  (one label per document, as classify); float32 for generative models, which no
  real checkpoint here could vouch for (a greedy decode may drift from fp32 after
  one flipped token), and for token classifiers, masked language models,
  cross-encoders and question answering, for the same reason: their answers are a
  label per token, a ranking over the whole vocabulary, a score that orders passages
  and a span chosen among close scores, more fragile
  than one label per document, and no real checkpoint of any is at hand to
  measure them;
* float32 on any other CPU, where bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from docqueue.tasks import CAUSAL_LM, CLASSIFIER, ENCODER, NLI, SEQ2SEQ, Family, declared

#: CPU flags (Linux /proc/cpuinfo) that mean native bf16 dot products.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Families ``auto`` loads in bf16 on such a CPU.
BF16_ON_CPU = frozenset({CLASSIFIER, NLI, ENCODER})


@dataclass(frozen=True)
class DtypeChoice:
    #: A torch dtype's name: "float32", "bfloat16", "float16".
    name: str
    #: Why, for the worker's log.
    reason: str


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The native-bf16 flags this CPU reports (none off Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return [f for f in BF16_FLAGS if f in flags]


def choose_dtype(
    setting: str, device_type: str, family: Family, bf16_flags: list[str] | None = None
) -> DtypeChoice:
    """The dtype for a model of ``family`` on a device of ``device_type`` ("cpu",
    "cuda", "mps") under ``setting`` (DOCQUEUE_DTYPE).  ``bf16_flags``: the CPU's,
    read from /proc/cpuinfo when not given."""
    if setting != "auto":
        return DtypeChoice(setting, "DOCQUEUE_DTYPE")
    if device_type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", "auto: the GPU supports bf16")
        return DtypeChoice("float16", "auto: the GPU lacks bf16")
    if device_type != "cpu":
        return DtypeChoice("float32", f"auto: fp32 on {device_type}")
    flags = cpu_bf16_flags() if bf16_flags is None else bf16_flags
    if not flags:
        return DtypeChoice("float32", "auto: this CPU has no native bf16 (avx512_bf16, amx_bf16)")
    if family not in BF16_ON_CPU:
        kind = "generative models" if family in (SEQ2SEQ, CAUSAL_LM) else f"{family} models"
        return DtypeChoice(
            "float32", f"auto: the CPU has {flags[0]}, but {kind} keep fp32 on CPU (unmeasured)"
        )
    return DtypeChoice("bfloat16", f"auto: the CPU has {', '.join(flags)} and this is an encoder")


def whole_process_dtype(task: str, setting: str) -> str:
    """The dtype a CPU worker picks for the benchmark model of ``task``: both arms
    of ``docqueue bench --whole-process`` run in it."""
    return choose_dtype(setting, "cpu", declared(task).families[0]).name
