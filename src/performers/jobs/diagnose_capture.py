"""Capture the q, k, v of every attention layer of a model running *exact* attention, with hooks.

* A performers model (a directory written by ``performers train`` or ``save_pretrained``) on
  proteins: a forward pre-hook on each :class:`~performers.FavorAttention` records its inputs and
  a forward hook replaces its output by exact softmax attention, so the whole model runs
  exactly (later layers see exact inputs) whatever backend it was trained with.
* A Hugging Face model (BERT, RoBERTa, ESM, GPT-2, Llama: the families ``performers convert``
  supports) on text: for the duration of one forward pass the model's attention function is
  HF's ``sdpa`` wrapped by a recorder (registered in ``AttentionInterface``), so the q/k/v are
  those after rotary embeddings, with the module's own scaling (ESM's pre-scaled queries as the
  ``"favor"`` backend rebalances them, :func:`performers.integrations.hf_esm.favor_query`); the
  previous attention implementation (e.g. ``"favor"`` for a converted model) is restored after.

Weights and modules are never changed. The padding of each batch comes from the tokenizer's
attention mask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from performers.jobs.diagnose_measure import CapturedAttention
from performers.layers import FavorAttention
from performers.models.io import MODEL_CLASSES
from performers.ops import exact_attention
from performers.utils.errors import InputError

__all__ = [
    "DiagnoseError",
    "capture_hf",
    "capture_performers",
    "model_kind",
    "read_sentences",
]

_HF_NAME = "performers-diagnose"


class DiagnoseError(InputError):
    """An input ``performers diagnose`` cannot use: the message names the argument (``MODEL``,
    ``--data``, ...) and what was expected."""


def model_kind(path: str | Path) -> str:
    """``"performers"`` or ``"hf"`` for a model directory (a run directory's ``final/`` counts).

    Raises:
        DiagnoseError: no such directory, no ``config.json``, or a config of neither kind.
    """
    path = Path(path)
    if (path / "final").is_dir():
        path = path / "final"
    config_path = path / "config.json"
    if not config_path.is_file():
        raise DiagnoseError(f"MODEL {path}: not a model directory (no config.json)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiagnoseError(f"MODEL {config_path}: not a JSON config ({error})") from None
    names = raw.get("architectures") or []
    if isinstance(names, list) and names and names[0] in MODEL_CLASSES:
        return "performers"
    if "model_type" in raw:
        return "hf"
    raise DiagnoseError(
        f"MODEL {path}: config.json is neither a performers model ({sorted(MODEL_CLASSES)}) "
        "nor a Hugging Face one (no model_type)"
    )


def read_sentences(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, one sentence each.

    Raises:
        DiagnoseError: the file holds no sentence.
    """
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise DiagnoseError(f"--data {path}: no sentence (expected one sentence per line)")
    return sentences


def _no_attention(model: nn.Module, what: str) -> DiagnoseError:
    return DiagnoseError(
        f"MODEL: {type(model).__name__} has no attention module that {what} "
        "(performers diagnose captures q/k/v with hooks on those modules)"
    )


@torch.no_grad()
def capture_performers(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor
) -> list[CapturedAttention]:
    """q/k/v of every :class:`~performers.FavorAttention` of a performers model run on
    ``input_ids`` ``(B, L)`` with ``attention_mask`` ``(B, L)`` (1 = real token), attention
    computed exactly. The model must run its ``"favor"`` backend (load it with
    ``attention="favor"``) so that the hooked module is called; its output is replaced.

    Raises:
        DiagnoseError: the model has no FavorAttention module.
    """
    modules = [m for m in model.modules() if isinstance(m, FavorAttention)]
    if not modules:
        raise _no_attention(model, "is a performers FavorAttention")
    padding = attention_mask == 0
    captured: list[CapturedAttention] = []

    def record(module: FavorAttention, args: tuple, kwargs: dict) -> None:
        q, k, v = args[:3]
        scale = module.scale if module.scale is not None else q.shape[-1] ** -0.5
        captured.append(
            CapturedAttention(
                q.double(),
                k.double(),
                v.double(),
                padding,
                bool(kwargs.get("is_causal", kwargs.get("causal", False))),
                float(scale),
            )
        )

    def exact(module: FavorAttention, args: tuple, kwargs: dict, output: Tensor) -> Tensor:
        q, k, v = args[:3]
        layer = captured[-1]
        out = exact_attention(
            q,
            k,
            v,
            is_causal=layer.causal,
            scale=layer.scale,
            key_padding_mask=kwargs.get("key_padding_mask"),
        )
        return out.to(output.dtype)

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    handles += [m.register_forward_hook(exact, with_kwargs=True) for m in modules]
    try:
        model(input_ids, attention_mask=attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _hf_recorder(captured: list[dict]):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from performers.integrations.hf_esm import favor_query

    def forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs: Any):
        groups = int(getattr(module, "num_key_value_groups", 1) or 1)
        # What the "favor" backend gives FAVOR+ (ESM's pre-scaled queries rebalanced): the same
        # logits, and the error measured is the error the converted model will have.
        favor_q, scaling = favor_query(module, query, kwargs.get("scaling"))
        causal = kwargs.get("is_causal")
        captured.append(
            {
                "q": favor_q.detach(),
                "k": key.detach().repeat_interleave(groups, dim=1),
                "v": value.detach().repeat_interleave(groups, dim=1),
                "scale": float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
                "causal": bool(causal if causal is not None else getattr(module, "is_causal", False)),
            }
        )
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return forward


@torch.no_grad()
def capture_hf(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> list[CapturedAttention]:
    """q/k/v of every self-attention of a Hugging Face model (exact ``sdpa`` attention) run on
    ``input_ids`` ``(B, L)`` with ``attention_mask`` ``(B, L)`` (1 = real token).

    Raises:
        DiagnoseError: a model family ``performers convert`` does not support, or one whose
            attention modules do not call HF's attention interface.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from performers.integrations.transformers import attention_modules

    try:
        attention_modules(model)
    except ValueError as error:
        raise DiagnoseError(f"MODEL: {error}") from None
    captured: list[dict] = []
    AttentionInterface.register(_HF_NAME, _hf_recorder(captured))
    AttentionMaskInterface.register(_HF_NAME, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_HF_NAME)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        model.set_attn_implementation(previous)
    if not captured:
        raise _no_attention(model, "calls Hugging Face's attention interface")
    padding = attention_mask == 0
    return [
        CapturedAttention(c["q"].double(), c["k"].double(), c["v"].double(), padding, c["causal"], c["scale"])
        for c in captured
    ]


def protein_batch(sequences: Sequence[str], tokenizer: Any, max_length: int) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` ``(B, L)`` of proteins as the models read them
    (``[<cls>, residues..., <eos>]``, cropped at the start to ``max_length``, padded)."""
    from performers.proteins import CausalLMCollator, ProteinSequences

    dataset = ProteinSequences(list(sequences), tokenizer, max_length)
    batch = CausalLMCollator(tokenizer)([dataset[i] for i in range(len(dataset))])
    return batch["input_ids"], batch["attention_mask"]
