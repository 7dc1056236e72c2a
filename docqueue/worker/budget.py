"""How big a batch may be: its budget in the runner's cost unit, from the settings
or from the device."""

from __future__ import annotations

from typing import Any

from docqueue.config import Settings
from docqueue.tasks import CAUSAL_LM, SEQ2SEQ
from docqueue.worker.models import LoadedModel
from docqueue.worker.runners import Limits

#: Default batch budget in padded tokens when the device does not suggest one.
CPU_TOKEN_BUDGET = 8192


def limits_for(settings: Settings, model: LoadedModel) -> Limits:
    budget = settings.token_budget or _budget(model)
    return Limits(budget, settings.max_batch_rows, settings.max_new_tokens_cap)


def _budget(model: LoadedModel) -> int:
    """Default batch budget in the runner's cost unit (padded tokens, plus new tokens
    for generation).

    CPU: small enough that a batch of a base-size encoder takes about a second, so a
    single document never waits long behind one; generative families get four times
    more, since each decoding step costs nearly the same for a batch as for one row.
    GPU: half of the free memory, at a generous estimate of the bytes a token holds
    (keys and values of every layer, times four for activations and headroom)."""
    generative = model.family in (SEQ2SEQ, CAUSAL_LM)
    if model.device.type != "cuda":
        return CPU_TOKEN_BUDGET * (4 if generative else 1)
    import torch

    config = model.model.config
    hidden = _first(config, "hidden_size", "d_model", "n_embd", default=1024)
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", default=24)
    if getattr(config, "is_encoder_decoder", False):
        layers += _first(config, "decoder_layers", "num_decoder_layers", default=layers)
    itemsize = next(model.model.parameters()).element_size()
    per_token = hidden * layers * 2 * itemsize * 4
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(CPU_TOKEN_BUDGET, int(free * 0.5 / per_token))


def _first(config: Any, *names: str, default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default
