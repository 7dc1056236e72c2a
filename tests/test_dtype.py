"""DOCQUEUE_DTYPE=auto: bf16 for encoders on CPUs with native bf16, fp32 elsewhere,
and the reason, from the CPU's real flags or a cpuinfo file written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from docqueue.config import Settings
from docqueue.tasks import (
    CAUSAL_LM,
    CLASSIFIER,
    CROSS_ENCODER,
    ENCODER,
    MASKED_LM,
    NLI,
    SEQ2SEQ,
    TOKEN_CLASSIFIER,
)
from docqueue.worker.dtype import choose_dtype, cpu_bf16_flags
from docqueue.worker.models import load_model

SAPPHIRE_RAPIDS = "flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "flags\t\t: fpu vme sse2 avx2 avx512f avx512bw\n"


def cpuinfo(tmp_path: Path, flags_line: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\n{flags_line}\nprocessor\t: 1\n")
    return path


def test_flags_are_read_from_cpuinfo(tmp_path):
    assert cpu_bf16_flags(cpuinfo(tmp_path, SAPPHIRE_RAPIDS)) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(cpuinfo(tmp_path, SKYLAKE)) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


@pytest.mark.parametrize("family", [CLASSIFIER, ENCODER, NLI])
def test_auto_picks_bf16_for_encoders_where_the_cpu_has_it(family):
    choice = choose_dtype("auto", "cpu", family, bf16_flags=["avx512_bf16"])
    assert choice.name == "bfloat16"
    assert "avx512_bf16" in choice.reason and "encoder" in choice.reason


@pytest.mark.parametrize("family", [SEQ2SEQ, CAUSAL_LM])
def test_auto_keeps_fp32_for_generative_models(family):
    choice = choose_dtype("auto", "cpu", family, bf16_flags=["amx_bf16"])
    assert choice.name == "float32" and "generative" in choice.reason


@pytest.mark.parametrize("family", [TOKEN_CLASSIFIER, MASKED_LM, CROSS_ENCODER])
def test_auto_keeps_fp32_for_per_token_answers_no_checkpoint_vouches_for(family):
    choice = choose_dtype("auto", "cpu", family, bf16_flags=["amx_bf16"])
    assert choice.name == "float32" and f"{family} models keep fp32" in choice.reason


def test_auto_keeps_fp32_on_a_cpu_without_bf16():
    choice = choose_dtype("auto", "cpu", ENCODER, bf16_flags=[])
    assert choice.name == "float32" and "no native bf16" in choice.reason


def test_a_set_dtype_wins():
    assert choose_dtype("float32", "cpu", ENCODER, bf16_flags=["amx_bf16"]).name == "float32"
    assert choose_dtype("bfloat16", "cpu", CAUSAL_LM, bf16_flags=[]).name == "bfloat16"


def test_the_loaded_model_carries_the_dtype_auto_chose(tiny_classifier):
    """On this machine's real CPU: the weights are in the dtype the model reports."""
    expected = "bfloat16" if cpu_bf16_flags() else "float32"
    loaded = load_model("tiny", tiny_classifier, Settings(device="cpu", dtype="auto"))
    assert loaded.dtype == expected
    assert loaded.model.dtype == getattr(torch, expected)
