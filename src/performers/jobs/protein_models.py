"""One loader for protein model directories: this package's models and Hugging Face ones.

:func:`load_protein_model` takes a directory and decides what it holds:

* **A performers model**: a ``save_pretrained`` directory (``config.json`` naming a Performer
  class, ``model.safetensors``, the protein ``tokenizer.json``) or a training run directory
  (its ``final/``), as ``performers train`` writes them; loaded with
  :func:`performers.from_pretrained` and :class:`~performers.proteins.ProteinTokenizer`.
* **A Hugging Face protein model** of a family the ``"favor"`` attention runs
  (:data:`~performers.integrations.transformers.SUPPORTED_ATTENTION_CLASSES`): ESM-2 /
  ESM-1b (``EsmForMaskedLM``, ``EsmModel``, ...), a ProtBert-style ``BertForMaskedLM`` whose
  tokenizer wants residues separated by spaces, a ProtGPT2-style ``GPT2LMHeadModel`` (BPE on
  the raw sequence). A directory converted by ``performers convert`` /
  :func:`~performers.integrations.transformers.performerize` loads with FAVOR+ and its saved
  projections; an unconverted one loads with softmax attention, and
  ``performerize(loaded.model, FavorConfig(...))`` switches it. Loading is offline (nothing is
  downloaded); this branch needs the ``[hf]`` extra.

* **A fine-tuned model**: the ``final/`` directory ``performers finetune`` writes (or its run
  directory): an encoder of either kind above and a per-residue classification or
  sequence-level regression head (:mod:`performers.jobs.finetuned`). ``performers predict``
  runs it; ``embed`` reads its encoder (:attr:`ProteinModel.backbone`); commands that need a
  language model (``score``, ``evaluate``, ``generate``) refuse it
  (:func:`refuse_finetuned`).

It returns a :class:`ProteinModel`: the model (eval mode), its tokenizer, its kind
(``"masked_lm"``, ``"causal_lm"``, ``"encoder"``: hidden states only, a base model or a task
head, or a fine-tuned ``"token_classifier"`` / ``"sequence_regressor"``) and
:meth:`ProteinModel.encode`, which turns protein strings into padded model inputs whatever the
tokenizer's conventions. A directory that is neither is a
:class:`NotAProteinModelError` (a :class:`~performers.ModelLoadError`, hence an
:class:`~performers.utils.InputError`) naming it and saying why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from performers.jobs.finetuned import (
    ENCODER_DIRECTORY,
    HuggingFaceEncoder,
    finetuned_from_config,
    is_finetuned_config,
)
from performers.models import from_pretrained
from performers.models.io import CONFIG_NAME, MODEL_CLASSES, ModelLoadError
from performers.proteins import ProteinTokenizer
from performers.utils import InputError

__all__ = [
    "FINETUNED_KINDS",
    "KINDS",
    "NotALanguageModelError",
    "NotAProteinModelError",
    "ProteinModel",
    "load_protein_model",
    "protein_model_source",
    "refuse_finetuned",
]

# What a fine-tuned model's head gives: classes per residue, or one value per protein.
FINETUNED_KINDS = ("token_classifier", "sequence_regressor")
KINDS = ("masked_lm", "causal_lm", "encoder", *FINETUNED_KINDS)
# The 20 standard amino acids: a protein tokenizer must know each of them.
_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_PERFORMER_KINDS = {"PerformerForMaskedLM": "masked_lm", "PerformerForCausalLM": "causal_lm"}


class NotAProteinModelError(ModelLoadError):
    """A directory that holds neither a performers protein model nor a Hugging Face protein
    model this package can run; the message names the directory and what is missing."""


class NotALanguageModelError(InputError):
    """A fine-tuned model (a classifier or regressor) given to a command that needs a language
    model (``score``, ``evaluate``, ``generate``); the message names the directory and says
    what runs it instead."""


@dataclass(frozen=True)
class ProteinModel:
    """A loaded protein model and what is needed to feed it.

    Attributes:
        model: the model, in eval mode.
        tokenizer: a :class:`~performers.proteins.ProteinTokenizer` (performers models) or the
            Hugging Face tokenizer saved with the model.
        kind: ``"masked_lm"``, ``"causal_lm"``, ``"encoder"`` (no language-model head), or a
            fine-tuned ``"token_classifier"`` / ``"sequence_regressor"``.
        source: ``"performers"``, ``"huggingface"`` or ``"finetuned"`` (a model of
            ``performers finetune``: it reads :class:`~performers.proteins.ProteinTokenizer`
            ids whatever its encoder).
        family: ``"performer"``, or the Hugging Face ``model_type`` (``"esm"``, ``"bert"``, ...);
            for a fine-tuned model, its encoder's.
        path: the directory the files were read from (a run directory's ``final/``).
        residue_separator: what goes between residues before the Hugging Face tokenizer sees
            a protein: ``" "`` for ProtBert-style tokenizers, else ``""``.
        backbone: a fine-tuned model's encoder as a protein model of kind ``"encoder"`` (what
            ``embed`` reads); None for the others.
        details: a fine-tuned model's ``config.json`` (its classes, metric, ...); else empty.
    """

    model: nn.Module = field(repr=False)
    tokenizer: Any = field(repr=False)
    kind: str
    source: str
    family: str
    path: Path
    residue_separator: str = ""
    backbone: ProteinModel | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    def encode(self, sequences: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Protein strings (any case) → right-padded ``(input_ids, attention_mask)`` ``(B, L)`` int64, with
        the special tokens the model was trained with (``<cls>``/``<eos>`` for ESM and
        performers models, ``[CLS]``/``[SEP]`` for BERT, none for GPT-2)."""
        if self.source != "huggingface":  # a fine-tuned model reads ProteinTokenizer ids too
            return self.tokenizer.batch_encode(list(sequences))
        tokenizer = self.tokenizer
        # Upper-cased as ProteinTokenizer does: protein vocabularies hold capital letters only.
        encoded = [tokenizer(self.residue_separator.join(s.upper()))["input_ids"] for s in sequences]
        # The pad id matters only where a model reads it (ESM's absolute positions skip it);
        # a tokenizer without one (GPT-2) pads with its end token, masked out anyway.
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), width), pad if pad is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        return ids, mask


def load_protein_model(path: str | Path) -> ProteinModel:
    """Load a protein model directory, this package's or a Hugging Face one (module docstring).

    Args:
        path: a ``save_pretrained`` directory or a training run directory (its ``final/``),
            including what ``performers finetune`` writes (a fine-tuned model's run directory or
            its ``final/``).

    Returns:
        A :class:`ProteinModel` (model in eval mode, tokenizer, kind, source, family).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        NotAProteinModelError: ``path`` holds no ``config.json``; or a performers model without
            a protein ``tokenizer.json``; or a Hugging Face model of a family the ``"favor"``
            attention does not run, without a tokenizer, or whose tokenizer does not encode
            the 20 amino acids. The message names the directory.
        ModelLoadError: a performers model whose files cannot be loaded as written.
    """
    directory, source, name = _resolve(path)
    if source == "performers":
        return _load_performers(directory, name)
    if source == "finetuned":
        return _load_finetuned(directory)
    return _load_huggingface(directory, name)


def protein_model_source(path: str | Path) -> str:
    """``"performers"``, ``"huggingface"`` or ``"finetuned"``: which loader
    :func:`load_protein_model` would use for ``path``, read from its ``config.json`` alone (no
    weights are loaded).

    Raises:
        FileNotFoundError, NotAProteinModelError: as :func:`load_protein_model`, for a directory
            without a readable ``config.json`` or whose config is of neither kind.
    """
    return _resolve(path)[1]


def _resolve(path: str | Path) -> tuple[Path, str, str]:
    """``(directory, source, name)``: the directory holding ``config.json`` (a run's ``final/``),
    ``"performers"``, ``"huggingface"`` or ``"finetuned"``, and the performers class, the HF
    ``model_type`` or the fine-tuned model's class."""
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such model directory")
    if not (directory / CONFIG_NAME).is_file() and (directory / "final" / CONFIG_NAME).is_file():
        directory = directory / "final"  # a training run: its final model
    config = _read_config(directory)
    architectures = config.get("architectures") or [None]
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if is_finetuned_config(config):
        return directory, "finetuned", str(architecture)
    if architecture in MODEL_CLASSES and "model_type" not in config:
        return directory, "performers", architecture
    if "model_type" in config:
        return directory, "huggingface", str(config["model_type"])
    raise NotAProteinModelError(
        f"{directory}: not a protein model directory: its {CONFIG_NAME} names neither a performers "
        f"model class ({sorted(MODEL_CLASSES)}) nor a Hugging Face model_type"
    )


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise NotAProteinModelError(
            f"{directory}: not a protein model directory (no {CONFIG_NAME}); expected a performers "
            "model or run directory, or a Hugging Face save_pretrained directory"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotAProteinModelError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise NotAProteinModelError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _load_performers(directory: Path, architecture: str) -> ProteinModel:
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise NotAProteinModelError(
            f"{directory}: a performers {architecture} without tokenizer.json, so not a protein model "
            "(performers train saves the protein tokenizer beside the model)"
        )
    try:
        tokenizer = ProteinTokenizer.load(tokenizer_path)
    except ValueError as error:
        raise NotAProteinModelError(f"{directory}: not a protein model: {error}") from None
    kind = {"PerformerForMaskedLM": "masked_lm", "PerformerForCausalLM": "causal_lm"}.get(
        architecture, "encoder"
    )
    return ProteinModel(from_pretrained(directory), tokenizer, kind, "performers", "performer", directory)


def _kind_of(model: nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForMaskedLM"):
        return "masked_lm"
    if name.endswith(("LMHeadModel", "ForCausalLM")):
        return "causal_lm"
    return "encoder"


def _residue_separator(tokenizer: Any, directory: Path) -> str:
    """``""`` when the tokenizer knows every amino acid written as one word, ``" "`` when it
    needs them as separate words (ProtBert: WordPiece over single-letter tokens), else refuse."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    for separator in ("", " "):
        ids = tokenizer(separator.join(_AMINO_ACIDS), add_special_tokens=False)["input_ids"]
        if ids and (unknown is None or unknown not in ids):
            return separator
    raise NotAProteinModelError(
        f"{directory}: its tokenizer ({type(tokenizer).__name__}) maps amino acids to the unknown token "
        f"(tried {_AMINO_ACIDS!r} and with spaces), so it is not a protein model's tokenizer"
    )


def _load_huggingface(directory: Path, model_type: str, **model_options: Any) -> ProteinModel:
    """Checks the family and the tokenizer before the weights load (an ESM-2 15B takes a while).
    ``model_options`` go to the model class's ``from_pretrained`` (``add_pooling_layer``)."""
    from performers.integrations.transformers import SUPPORTED_ATTENTION_CLASSES, load_hf_model

    if model_type not in SUPPORTED_ATTENTION_CLASSES:
        raise NotAProteinModelError(
            f"{directory}: a Hugging Face model of model_type {model_type!r}, not a family this package "
            f"runs (supported model types: {sorted(SUPPORTED_ATTENTION_CLASSES)})"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download (as load_hf_model)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError):  # TypeError: ESM's tokenizer without its vocab.txt
        raise NotAProteinModelError(
            f"{directory}: a Hugging Face {model_type!r} model without a tokenizer (save it into the same "
            "directory with tokenizer.save_pretrained)"
        ) from None
    separator = _residue_separator(tokenizer, directory)
    model, _ = load_hf_model(directory, supported_only=True, **model_options)
    return ProteinModel(model, tokenizer, _kind_of(model), "huggingface", model_type, directory, separator)


def refuse_finetuned(path: str | Path, needs: str = "a masked or causal language model") -> None:
    """Raise :class:`NotALanguageModelError` when ``path`` holds a fine-tuned model (a command
    that needs a language model was given a classifier or regressor); anything else passes
    (its own loader names what is wrong with it)."""
    try:
        directory, source, _ = _resolve(path)
    except (OSError, ValueError):
        return
    if source == "finetuned":
        raise NotALanguageModelError(finetuned_refusal(directory, _read_config(directory), needs))


def finetuned_refusal(directory: Path, config: dict[str, Any], needs: str) -> str:
    """The one-line message of :func:`refuse_finetuned`."""
    if config.get("task") == "tokens":
        classes = config.get("classes") or []
        what = f"a fine-tuned per-residue classifier (classes {'/'.join(map(str, classes))})"
    else:
        what = "a fine-tuned sequence-level regressor"
    return (
        f"{directory}: {what}, not a language model; this command needs {needs} "
        "(performers predict runs it, performers embed reads its encoder)"
    )


def _load_finetuned(directory: Path) -> ProteinModel:
    """A ``performers finetune`` model (:mod:`performers.jobs.finetuned`): its encoder loaded as
    the protein model it is (``encoder/``), then the head."""
    config = _read_config(directory)
    encoder_info = config.get("encoder")
    if not isinstance(encoder_info, dict) or encoder_info.get("source") not in ("performers", "huggingface"):
        raise NotAProteinModelError(
            f"{directory / CONFIG_NAME}: a fine-tuned model's config.json needs 'encoder' with "
            f"'source' performers or huggingface, got {encoder_info!r}"
        )
    encoder_dir = directory / str(encoder_info.get("directory", ENCODER_DIRECTORY))
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise NotAProteinModelError(f"{directory}: a fine-tuned model without tokenizer.json")
    tokenizer = ProteinTokenizer.load(tokenizer_path)
    if encoder_info["source"] == "performers":
        backbone = _load_performers(encoder_dir, _resolve(encoder_dir)[2])
        encoder: nn.Module = backbone.model
    else:
        options = {"add_pooling_layer": False} if encoder_info.get("add_pooling_layer") is False else {}
        backbone = _load_huggingface(encoder_dir, _resolve(encoder_dir)[2], **options)
        table = encoder_info.get("vocabulary")
        if not isinstance(table, list) or len(table) != len(tokenizer):
            raise NotAProteinModelError(
                f"{directory / CONFIG_NAME}: 'encoder.vocabulary' must map each of the {len(tokenizer)} "
                f"tokenizer ids to the backbone's, got {table!r}"
            )
        encoder = HuggingFaceEncoder(
            backbone.model,
            table,
            hidden_size=int(backbone.model.config.hidden_size),
            source=str(encoder_dir),
            hf_tokenizer=backbone.tokenizer,
        )
    model = finetuned_from_config(config, encoder, directory, tokenizer)
    kind = "token_classifier" if config.get("task") == "tokens" else "sequence_regressor"
    return ProteinModel(
        model, tokenizer, kind, "finetuned", backbone.family, directory, backbone=backbone, details=config
    )
