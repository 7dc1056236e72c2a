"""What ``docqueue annotate`` does before its worker starts stays cheap: the model's
family comes from its config.json, the device from the driver's presence, and
neither torch nor transformers is imported by the parent process (2 s on 2 cores
that would compete with the worker's own start)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from docqueue.tasks import CAUSAL_LM, CLASSIFIER, ENCODER, SEQ2SEQ
from docqueue.worker.models import family_of, family_on_disk, packaged_embedding_model


def test_the_family_is_read_from_config_json(tiny_classifier, tiny_models):
    minilm = packaged_embedding_model()
    assert minilm
    assert family_on_disk(tiny_classifier) == CLASSIFIER
    assert family_on_disk(minilm) == ENCODER
    assert family_on_disk(tiny_models["bart"]) == SEQ2SEQ
    assert family_on_disk(tiny_models["t5"]) == SEQ2SEQ
    assert family_on_disk(tiny_models["gpt2"]) == CAUSAL_LM
    assert family_on_disk(tiny_models["llama"]) == CAUSAL_LM


def test_what_config_json_cannot_settle_is_left_to_autoconfig(tmp_path):
    """None sends annotate to transformers' AutoConfig, which knows the defaults."""
    assert family_on_disk(str(tmp_path / "missing")) is None
    assert family_on_disk("sentence-transformers/all-MiniLM-L6-v2") is None  # a hub id
    cases = {
        "no-architectures": {"model_type": "bert"},
        # an encoder-decoder whose file leaves is_encoder_decoder to its class default
        "unknown-encoder": {"architectures": ["FooModel"], "model_type": "foo"},
        "not-json": None,
    }
    for name, config in cases.items():
        (tmp_path / name).mkdir()
        text = json.dumps(config) if config is not None else "{broken"
        (tmp_path / name / "config.json").write_text(text)
        assert family_on_disk(str(tmp_path / name)) is None, name


def test_the_file_and_autoconfig_agree(tiny_classifier, tiny_models):
    from transformers import AutoConfig

    for path in [tiny_classifier, packaged_embedding_model(), *tiny_models.values()]:
        assert path
        assert family_on_disk(path) == family_of(AutoConfig.from_pretrained(path)), path


@pytest.mark.skipif(
    __import__("docqueue.launcher").launcher.nvidia_driver_present() is not False,
    reason="with an NVIDIA driver the devices are asked of torch",
)
def test_annotate_checks_and_picks_devices_without_torch(tiny_classifier):
    code = (
        "import sys; from docqueue.annotate import check_task; "
        "from docqueue.config import Settings; from docqueue.launcher import pick_devices; "
        f"check_task({tiny_classifier!r}, 'classify', Settings(), local_only=True); "
        "print(pick_devices(None), sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['cpu'] []"
