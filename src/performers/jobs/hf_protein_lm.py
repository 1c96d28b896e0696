"""Hugging Face protein models as a :class:`~performers.jobs.protein_lm.ProteinLM`, and one loader
that turns any protein model directory into one.

:func:`protein_lm_from_directory` takes any directory that
:func:`~performers.jobs.protein_models.load_protein_model` takes — this package's models (a run
or ``save_pretrained`` directory) or a Hugging Face ESM (converted by ``performers convert`` or
not), ProtBert-style BERT or ProtGPT2-style GPT-2 with its own tokenizer — and returns a
``ProteinLM``: this package's models wrapped by
:class:`~performers.jobs.protein_lm.PerformerProteinLM`, Hugging Face ones by
:class:`HuggingFaceProteinLM`. Embedding and scoring then run unchanged.

What a Hugging Face model's hidden states are (``output_hidden_states=True`` of its base model,
checked against transformers 5):

* ESM: ``[0]`` the embedding output (token embeddings, ESM's token-dropout rescaling and,
  for ESM-1b, learned positions; no LayerNorm in ESM-2), ``[i]`` block ``i``'s output and the
  last one after ``emb_layer_norm_after`` — transformers returns the normalized state in last
  place, the one the LM head reads.
* BERT (ProtBert): ``[0]`` the embedding output after the embeddings' LayerNorm, ``[i]``
  block ``i``'s output; BERT is post-LayerNorm, so every block's output, the last included,
  is already normalized and is what the LM head reads.
* GPT-2 (ProtGPT2): ``[0]`` token plus position embeddings, ``[i]`` block ``i``'s output and
  the last one after ``ln_f``.

Special tokens come from the tokenizer's own names: ``<cls>`` is ``cls_token_id`` or else
``bos_token_id``, ``<eos>`` is ``eos_token_id`` or else ``sep_token_id``; ``pad``, ``mask``
and ``unk`` likewise (GPT-2 has no pad: its ``<|endoftext|>`` pads, masked out anyway, and no
mask). Every protein is laid out ``[<cls>, tokens..., <eos>]`` — ESM's and BERT's own layout;
for ProtGPT2, ``<|endoftext|>`` on both sides, the separator it was trained with (its
training text also broke sequences into lines of 60 residues; here a protein is one unbroken
string, which its byte-pair tokenizer reads as it is).

ProtGPT2's byte-pair tokens span several residues (:attr:`HuggingFaceProteinLM.one_token_per_residue`
is False): ``score`` gives its exact sequence log-likelihood (sum over its tokens and the
closing ``<|endoftext|>``), ``embed`` the mean over its tokens; per-residue outputs and the
masked strategies, which need one token per residue, are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from performers.jobs.cropping import crop_to_rule
from performers.jobs.protein_evaluation import ProteinEvaluation
from performers.jobs.protein_lm import PerformerProteinLM, ProteinLM
from performers.jobs.protein_models import (
    NotALanguageModelError,
    NotAProteinModelError,
    ProteinModel,
    finetuned_refusal,
    load_protein_model,
    protein_model_source,
)
from performers.jobs.proteins import load_trained
from performers.proteins.data import item_generator
from performers.training import evaluation_mode, model_device
from performers.utils import InputError

__all__ = [
    "FinetunedEncoderLM",
    "HuggingFaceProteinLM",
    "HuggingFaceVocabulary",
    "evaluate_protein_lm",
    "generate_proteins",
    "protein_lm_from_directory",
]

ATTENTIONS = ("favor", "exact")
# <cls> and <eos> around every protein.
_SPECIALS = 2


def _first(*ids: int | None) -> int | None:
    return next((i for i in ids if i is not None), None)


def _multi_residue_tokens(tokenizer: Any) -> bool:
    """True when the vocabulary holds a token of two or more residue letters (ProtGPT2's BPE
    merges); word-piece and byte-level markers (``##``, ``Ġ``, ``▁``) are not letters."""
    for token in tokenizer.get_vocab():
        word = token.lstrip("#Ġ▁")
        if len(word) > 1 and word.isalpha() and word.isupper():
            return True
    return False


class HuggingFaceVocabulary:
    """A Hugging Face protein tokenizer as a :class:`~performers.jobs.protein_lm.ProteinVocabulary`:
    ``encode("MKV")`` is ``[cls_id, tokens of MKV..., eos_id]`` (module docstring)."""

    def __init__(self, loaded: ProteinModel) -> None:
        tokenizer = loaded.tokenizer
        self.tokenizer, self.separator = tokenizer, loaded.residue_separator
        self.cls_id = _first(getattr(tokenizer, "cls_token_id", None), tokenizer.bos_token_id)
        self.eos_id = _first(tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None))
        if self.cls_id is None or self.eos_id is None:
            raise NotAProteinModelError(
                f"{loaded.path}: its tokenizer ({type(tokenizer).__name__}) names no start token "
                "(cls_token / bos_token) or no end token (eos_token / sep_token); a protein is read "
                "as [start, residues..., end]"
            )
        self.pad_id = _first(tokenizer.pad_token_id, self.eos_id)
        self.mask_id = getattr(tokenizer, "mask_token_id", None)
        self.unk_id = tokenizer.unk_token_id
        self.one_token_per_residue = not _multi_residue_tokens(tokenizer)

    def encode(self, sequence: str, *, add_special_tokens: bool = True) -> list[int]:
        residues = sequence.upper()
        ids = self.tokenizer(self.separator.join(residues), add_special_tokens=False)["input_ids"]
        if self.one_token_per_residue and len(ids) != len(residues):
            raise ValueError(
                f"protein {sequence[:20]!r}...: {len(residues)} residues became {len(ids)} tokens, "
                "but this tokenizer should give one token per residue"
            )
        return [self.cls_id, *ids, self.eos_id] if add_special_tokens else list(ids)


def _residue_limit(config: Any, family: str) -> int | None:
    """Most residues one protein may have: learned positions minus ``<cls>`` and ``<eos>``;
    None for rotary ESM. ESM's learned positions start after its padding index (as fairseq's),
    so ``pad_token_id + 1`` of them are never used. For byte-pair tokens (several residues
    each) the limit is a safe bound: ``n`` residues never take more than ``n`` tokens."""
    if family == "esm" and getattr(config, "position_embedding_type", "absolute") == "rotary":
        return None
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    if family == "esm":
        positions -= (config.pad_token_id or 0) + 1
    return positions - _SPECIALS


class HuggingFaceProteinLM:
    """:class:`~performers.jobs.protein_lm.ProteinLM` of a loaded Hugging Face protein model
    (module docstring). ``protein_model`` keeps the :class:`ProteinModel` it came from."""

    def __init__(self, loaded: ProteinModel) -> None:
        if loaded.source != "huggingface":
            raise TypeError(f"a Hugging Face protein model is needed, got a {loaded.source} one")
        self.protein_model, self.model = loaded, loaded.model
        self.tokenizer = HuggingFaceVocabulary(loaded)
        self.one_token_per_residue = self.tokenizer.one_token_per_residue
        config = loaded.model.config
        self.num_layers = int(config.num_hidden_layers)
        self.is_causal = loaded.kind == "causal_lm"
        self.residue_limit = _residue_limit(config, loaded.family)
        self.hidden_size = int(config.hidden_size)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.protein_model.kind == "encoder":  # the user's directory: an input error, not a bug
            raise InputError(
                f"{self.protein_model.path}: a {type(self.model).__name__} has no language-model head "
                "(this needs a *ForMaskedLM or a causal LM; embed reads its hidden states)"
            )
        with evaluation_mode(self.model), torch.no_grad():
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Sequence[Tensor]:
        # The base model: the hidden states without the LM head's (B, L, V) logits.
        with evaluation_mode(self.model), torch.no_grad():
            out = self.model.base_model(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
            )
        return out.hidden_states


class FinetunedEncoderLM:
    """The encoder of a fine-tuned model (``performers finetune``) as a
    :class:`~performers.jobs.protein_lm.ProteinLM`: its hidden states are the encoder's (what
    ``embed`` reads); :meth:`logits` refuses with :class:`NotALanguageModelError` (a classifier
    has no language-model head). ``protein_model`` is the fine-tuned
    :class:`~performers.jobs.protein_models.ProteinModel`."""

    def __init__(self, encoder: ProteinLM, protein_model: ProteinModel) -> None:
        self.encoder, self.protein_model = encoder, protein_model
        self.model = encoder.model
        self.tokenizer = encoder.tokenizer
        self.num_layers = encoder.num_layers
        self.is_causal = False
        self.residue_limit = encoder.residue_limit
        self.one_token_per_residue = True
        self.hidden_size = getattr(encoder, "hidden_size", None)

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        loaded = self.protein_model
        raise NotALanguageModelError(
            finetuned_refusal(loaded.path, loaded.details, "a masked or causal language model")
        )

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Sequence[Tensor]:
        return self.encoder.hidden_states(input_ids, attention_mask)


def _finetuned_lm(path: str | Path, attention: str | None, device, dtype) -> FinetunedEncoderLM:
    loaded = load_protein_model(path)
    backbone = loaded.backbone
    if backbone.source == "performers":
        model = backbone.model
        if attention is not None:  # the twin asked for, from the encoder's own files
            model, _ = load_trained(backbone.path, attention=attention)
        encoder: ProteinLM = PerformerProteinLM(model.to(device=device, dtype=dtype), backbone.tokenizer)
    else:
        _set_attention(backbone, attention)
        backbone.model.to(device=device, dtype=dtype)
        encoder = HuggingFaceProteinLM(backbone)
    return FinetunedEncoderLM(encoder, loaded)


def _set_attention(loaded: ProteinModel, attention: str | None) -> None:
    """``"favor"``: FAVOR+ (an unconverted model gets the default :class:`~performers.FavorConfig`);
    ``"exact"``: softmax attention (a converted model drops its projections); None: as saved."""
    if attention is None:
        return
    from performers.integrations.transformers import is_performerized, performerize, unperformerize

    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if attention == "favor" and not is_performerized(loaded.model):
        performerize(loaded.model)
    elif attention == "exact" and is_performerized(loaded.model):
        unperformerize(loaded.model)


def protein_lm_from_directory(
    path: str | Path,
    *,
    attention: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ProteinLM:
    """The :class:`~performers.jobs.protein_lm.ProteinLM` of a protein model directory, this
    package's or a Hugging Face one (module docstring).

    Args:
        path: a run or ``save_pretrained`` directory of this package, or a Hugging Face protein
            model directory with its tokenizer; a fine-tuned model (``performers finetune``)
            gives its encoder (:class:`FinetunedEncoderLM`, no logits).
        attention: ``"favor"`` or ``"exact"`` (this package's twin; a Hugging Face model is
            converted or switched back to softmax), None: as saved.
        device, dtype: where and in what dtype the parameters go (None: as loaded).

    Raises:
        FileNotFoundError: no such directory.
        NotAProteinModelError: a directory that is neither, naming it and why.
    """
    if protein_model_source(path) == "performers":  # from config.json alone: one load, the twin asked for
        model, tokenizer = load_trained(path, attention=attention)
        return PerformerProteinLM(model.to(device=device, dtype=dtype), tokenizer)
    if protein_model_source(path) == "finetuned":
        return _finetuned_lm(path, attention, device, dtype)
    loaded = load_protein_model(path)
    _set_attention(loaded, attention)
    loaded.model.to(device=device, dtype=dtype)
    return HuggingFaceProteinLM(loaded)


# ---- evaluate: accuracy and perplexity of any ProteinLM ---------------------------------------


def _log_softmax(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def evaluate_protein_lm(
    lm: ProteinLM,
    sequences: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    max_length: int | None = None,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
) -> ProteinEvaluation:
    """Accuracy and perplexity of a :class:`~performers.jobs.protein_lm.ProteinLM` on proteins,
    in aggregate and per protein (``performers evaluate`` of a Hugging Face model).

    A masked model: exactly ``max(1, round(mask_prob · n))`` of each protein's ``n`` residues,
    drawn by a permutation seeded with ``seed`` and the protein's own residues (two evaluations
    agree, and a protein's masks do not depend on the others), are replaced by ``<mask>`` and
    predicted. A causal model: every next token, ``<eos>`` included (its own tokens: byte-pair
    tokens for ProtGPT2). Proteins are read whole, cropped only by the one rule of
    :mod:`performers.jobs.cropping`: to ``max_length - 2`` residues when given, else at the
    model's learned positions (rotary ESM: never).

    Returns:
        A :class:`~performers.jobs.protein_evaluation.ProteinEvaluation` (it unpacks as
        ``summary, rows``): ``summary`` with ``accuracy``, ``perplexity`` (``exp`` of the mean
        NLL), ``loss``, ``tokens`` (positions scored) and ``proteins``; one row per protein with
        ``id``, ``length``, ``scored_length``, ``tokens``, ``loss``, ``perplexity`` and
        ``accuracy``; ``crop`` counting the cropped proteins.

    Raises:
        ValueError: a masked model whose tokens span several residues, ``max_length`` below 3
            or beyond the learned positions, ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lm.is_causal and not getattr(lm, "one_token_per_residue", True):
        raise ValueError("a masked model evaluates masked residues: its tokens must be one per residue")
    names = list(ids) if ids is not None else [str(i) for i in range(len(sequences))]
    pairs, crop = crop_to_rule(
        list(zip(names, [s.upper() for s in sequences], strict=True)), lm.residue_limit, max_length=max_length
    )
    proteins = [s for _, s in pairs]
    rows: list[dict] = []
    for start in range(0, len(proteins), batch_size):
        batch = proteins[start : start + batch_size]
        rows += _evaluate_batch(lm, batch, names[start : start + batch_size], mask_prob, seed)
    for row, sequence in zip(rows, sequences, strict=True):
        row["length"] = len(sequence)
    skipped = [row["id"] for row in rows if row["tokens"] == 0]  # an empty protein, masked
    if skipped:
        crop = crop.skipping(skipped, "no residue to mask")
    kept = [(row, protein) for row, protein in zip(rows, proteins, strict=True) if row["tokens"]]
    if not kept:
        raise ValueError(f"no position to score in {len(proteins)} proteins")
    tokens = sum(row["tokens"] for row, _ in kept)
    nll = sum(row["loss"] * row["tokens"] for row, _ in kept)
    correct = sum(row["accuracy"] * row["tokens"] for row, _ in kept)
    loss = nll / tokens
    summary = {
        "accuracy": correct / tokens,
        "perplexity": math.exp(loss),
        "loss": loss,
        "tokens": tokens,
        "proteins": len(kept),
    }
    return ProteinEvaluation(summary, [row for row, _ in kept], crop, [protein for _, protein in kept])


def _evaluate_batch(
    lm: ProteinLM, batch: list[str], names: list[str], mask_prob: float, seed: int
) -> list[dict]:
    from performers.jobs.embedding import pad_encoded

    ids, mask = pad_encoded(lm.tokenizer, batch)
    if lm.is_causal:  # position t predicts token t + 1
        inputs, targets, scored = ids, ids[:, 1:], mask[:, 1:].bool()
    else:
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for row, protein in enumerate(batch):
            if not protein:
                continue
            count = max(1, round(mask_prob * len(protein)))
            generator = item_generator(seed, protein)  # this protein's masks, whatever its neighbours
            scored[row, torch.randperm(len(protein), generator=generator)[:count] + 1] = True  # after <cls>
        inputs, targets = ids.masked_fill(scored, lm.tokenizer.mask_id), ids
    logits = lm.logits(inputs.to(lm.device), mask.to(lm.device)).cpu()
    if lm.is_causal:
        logits = logits[:, :-1]
    log_probs = _log_softmax(logits)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    hits = log_probs.argmax(-1) == targets
    rows = []
    for row, (name, protein) in enumerate(zip(names, batch, strict=True)):
        where = scored[row]
        tokens = int(where.sum())
        loss = float(nll[row][where].mean()) if tokens else math.nan
        rows.append(
            {
                "id": name,
                "length": len(protein),
                "scored_length": len(protein),
                "tokens": tokens,
                "loss": loss,
                "perplexity": math.exp(loss),
                "accuracy": float(hits[row][where].float().mean()) if tokens else math.nan,
            }
        )
    return rows


# ---- generate: a Hugging Face causal protein model --------------------------------------------


def generate_proteins(
    lm: HuggingFaceProteinLM,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 50,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> list[str]:
    """Continue each prompt with a Hugging Face causal protein model (ProtGPT2-style), one
    prompt at a time (no padding), through the model's own ``generate``: a converted (FAVOR+)
    model with a new :class:`~performers.integrations.transformers.FavorCache` per prompt
    (constant cost per token), an unconverted one with its usual key/value cache.

    The prompt is read as the model was trained: ``<|endoftext|>`` (its start token) then the
    residues; up to ``max_new_tokens`` *tokens* follow (byte-pair tokens for ProtGPT2, several
    residues each), stopping at the end token. Returns prompt + new residues, letters only
    (ProtGPT2's line breaks are dropped), upper case.

    Raises:
        InputError: a model that is not causal (a masked model does not continue a sequence).
    """
    if not lm.is_causal:
        raise InputError(
            f"{lm.protein_model.path}: generation needs a causal language model (ProtGPT2-style); "
            f"this {type(lm.model).__name__} is a {lm.protein_model.kind.replace('_', ' ')}"
        )
    vocabulary = lm.tokenizer
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_k=top_k, top_p=top_p)
    else:  # greedy: the model's saved sampling settings would only warn
        options.update(temperature=None, top_k=None, top_p=None)
    from performers.integrations.transformers import FavorCache, is_performerized

    favor = is_performerized(lm.model)
    out = []
    for prompt in prompts:
        ids = torch.tensor([vocabulary.encode(prompt)[:-1]], device=lm.device)  # no <eos>: continue
        if favor:  # one running FAVOR+ state per layer: the same cost for every new token
            options["cache"] = FavorCache()
        with evaluation_mode(lm.model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tokens = lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                eos_token_id=vocabulary.eos_id,
                pad_token_id=vocabulary.pad_id,
                **options,
            )
        new = tokens[0, ids.shape[1] :].tolist()
        if vocabulary.eos_id in new:
            new = new[: new.index(vocabulary.eos_id)]
        text = vocabulary.tokenizer.decode(new, skip_special_tokens=True)
        out.append(prompt.upper() + "".join(ch for ch in text if ch.isalpha()).upper())
    return out
