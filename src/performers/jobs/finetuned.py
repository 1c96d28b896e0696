"""Fine-tuned protein models: the heads :func:`~performers.jobs.finetune` trains, the adapter that
feeds a Hugging Face backbone this package's token ids, and the directory they are saved in.

A fine-tuned model is an encoder (this package's :class:`~performers.models.PerformerModel`,
or a Hugging Face ESM / ProtBert base model behind :class:`HuggingFaceEncoder`) and a linear
head: per residue (:class:`TokenClassifier`, logits ``(B, L, classes)``) or on the mean of the
residues' hidden states (:class:`SequenceRegressor`, one value per protein). Both read
:class:`~performers.proteins.ProteinTokenizer` ids laid out ``[<cls>, residues..., <eos>]``.

Its directory (``performers finetune`` writes it to ``OUT/final/``; :func:`save_finetuned`)::

    config.json        what it is: {"performers_finetuned": 1, "architectures": ["TokenClassifier"],
                       "task": "tokens" | "regression", "num_classes", "classes" (the label
                       letters/names, in class order), "metric" ("q3", "accuracy" or "spearman"),
                       "pooling" ("none": per residue, "mean": mean of the residues),
                       "hidden_size", "encoder": {"source", "directory", ...}, "max_length"}
    head.safetensors   the head's weight and bias
    tokenizer.json     the protein tokenizer whose ids the model reads
    encoder/           the encoder, itself a loadable protein model directory: this package's
                       save_pretrained files and tokenizer.json, or the Hugging Face backbone's
                       save_pretrained files and its own tokenizer files

:func:`~performers.jobs.load_protein_model` loads it (kind ``"token_classifier"`` or
``"sequence_regressor"``); this module builds the model from the loaded encoder
(:func:`finetuned_from_config`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from performers.models import PerformerModel, save_pretrained
from performers.models.io import ModelLoadError
from performers.proteins import ProteinTokenizer
from performers.utils import InputError, atomic_write, package_version

__all__ = [
    "ENCODER_DIRECTORY",
    "FINETUNED_FORMAT",
    "FINETUNED_KEY",
    "HEAD_WEIGHTS",
    "HuggingFaceEncoder",
    "SequenceRegressor",
    "TokenClassifier",
    "finetuned_config",
    "finetuned_from_config",
    "is_finetuned_config",
    "save_finetuned",
]

# The key (and format number) that marks a fine-tuned model's config.json.
FINETUNED_KEY = "performers_finetuned"
FINETUNED_FORMAT = 1
HEAD_WEIGHTS = "head.safetensors"
ENCODER_DIRECTORY = "encoder"


class HuggingFaceEncoder(nn.Module):
    """A Hugging Face protein encoder (its base model: ESM, ProtBert) fed this package's
    protein-tokenizer ids, so that the labelled data, the heads and the training loop stay as
    they are: each :class:`~performers.proteins.ProteinTokenizer` id (``<pad>``, ``<mask>``,
    ``<cls>``, ``<eos>``, ``<unk>``, each residue letter) is looked up in the model's own
    vocabulary (``table``). Both lay a protein out ``[<cls>, residues..., <eos>]``, one token
    per residue. ``config.d_model`` is the model's hidden size (what the heads read).

    Build one from a loaded model with :meth:`from_protein_lm`; ``hf_tokenizer`` (the model's
    own tokenizer, or None) is kept to be saved beside the backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        table: Sequence[int],
        *,
        hidden_size: int,
        source: str,
        hf_tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.register_buffer("vocabulary", torch.tensor(list(table), dtype=torch.long), persistent=False)
        self.backbone = backbone
        self.config = SimpleNamespace(d_model=int(hidden_size), source=str(source))
        self.hf_tokenizer = hf_tokenizer

    @classmethod
    def from_protein_lm(cls, lm: Any, tokenizer: ProteinTokenizer | None = None) -> HuggingFaceEncoder:
        """The encoder of a :class:`~performers.jobs.hf_protein_lm.HuggingFaceProteinLM` (its base
        model), reading ``tokenizer``'s ids (default :class:`ProteinTokenizer`).

        Raises:
            InputError: a tokenizer whose tokens span several residues (ProtGPT2's), naming the
                directory: its hidden states cannot be read per residue.
        """
        path = lm.protein_model.path
        if not lm.one_token_per_residue:
            raise InputError(
                f"{path}: its tokens span several residues (byte-pair tokens, as ProtGPT2's), so its "
                "hidden states cannot be read per residue for fine-tuning"
            )
        tokenizer = tokenizer or ProteinTokenizer()
        vocabulary = lm.tokenizer
        specials = {"<pad>": vocabulary.pad_id, "<mask>": vocabulary.mask_id, "<cls>": vocabulary.cls_id,
                    "<eos>": vocabulary.eos_id, "<unk>": vocabulary.unk_id}  # fmt: skip
        unknown = vocabulary.unk_id if vocabulary.unk_id is not None else vocabulary.pad_id
        table = []
        for token in tokenizer.tokens:
            if token in specials:
                table.append(unknown if specials[token] is None else specials[token])
            else:
                (code,) = vocabulary.encode(token, add_special_tokens=False)
                table.append(code)
        return cls(
            lm.model.base_model,
            table,
            hidden_size=lm.hidden_size,
            source=str(path),
            hf_tokenizer=lm.protein_model.tokenizer,
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor):
        return self.backbone(input_ids=self.vocabulary[input_ids], attention_mask=attention_mask)


class TokenClassifier(nn.Module):
    """An encoder with a linear per-residue head: logits ``(B, L, classes)``. ``classes``: the
    label of each class in order (one character each for FLIP's label files, e.g. ``"HEC"``),
    default ``"0"``, ``"1"``, ..."""

    def __init__(
        self,
        encoder: PerformerModel | HuggingFaceEncoder,
        num_classes: int,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        labels = [str(k) for k in range(num_classes)] if classes is None else [str(c) for c in classes]
        if len(labels) != num_classes:
            raise ValueError(f"classes must name {num_classes} classes, got {len(labels)}: {labels}")
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.d_model, num_classes)
        self.classes = labels

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask).last_hidden_state)


class SequenceRegressor(nn.Module):
    """An encoder, the mean of its residues' hidden states (special tokens and padding
    excluded) and a linear head: predictions ``(B,)``."""

    def __init__(self, encoder: PerformerModel | HuggingFaceEncoder, special_ids: frozenset[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.d_model, 1)
        self.register_buffer("special", torch.tensor(sorted(special_ids)), persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.encoder(input_ids, attention_mask).last_hidden_state
        keep = (~torch.isin(input_ids, self.special) & (attention_mask != 0)).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)


def is_finetuned_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` (as a dict) is a fine-tuned model's."""
    return FINETUNED_KEY in config


def finetuned_config(model: TokenClassifier | SequenceRegressor, **details: Any) -> dict[str, Any]:
    """The ``config.json`` of a fine-tuned model (module docstring); ``details`` (JSON values,
    e.g. ``metric``, ``max_length``, ``task_name``) are recorded beside it."""
    encoder = model.encoder
    if isinstance(model, TokenClassifier):
        task, pooling, classes = "tokens", "none", list(model.classes)
    elif isinstance(model, SequenceRegressor):
        task, pooling, classes = "regression", "mean", None
    else:
        raise TypeError(f"model must be a TokenClassifier or SequenceRegressor, got {type(model).__name__}")
    if isinstance(encoder, HuggingFaceEncoder):
        backbone = encoder.backbone
        described: dict[str, Any] = {
            "source": "huggingface",
            "directory": ENCODER_DIRECTORY,
            "model_type": str(getattr(backbone.config, "model_type", "")),
            "vocabulary": encoder.vocabulary.tolist(),
            # A base model taken out of a *ForMaskedLM has no pooler: load it without one.
            "add_pooling_layer": getattr(backbone, "pooler", None) is not None,
            "trained_from": encoder.config.source,
        }
    elif isinstance(encoder, PerformerModel):
        described = {"source": "performers", "directory": ENCODER_DIRECTORY}
    else:
        raise TypeError(
            f"encoder must be a PerformerModel or HuggingFaceEncoder, got {type(encoder).__name__}"
        )
    return {
        FINETUNED_KEY: FINETUNED_FORMAT,
        "architectures": [type(model).__name__],
        "task": task,
        "num_classes": len(classes) if classes is not None else None,
        "classes": classes,
        "pooling": pooling,
        "hidden_size": int(encoder.config.d_model),
        "encoder": described,
        **details,
        "performers_version": package_version(),
    }


def save_finetuned(
    model: TokenClassifier | SequenceRegressor,
    directory: str | Path,
    *,
    tokenizer: ProteinTokenizer,
    **details: Any,
) -> Path:
    """Write a fine-tuned model's directory (module docstring) into ``directory`` (created;
    callers wanting an all-or-nothing write build it inside
    :func:`~performers.utils.files.atomic_directory`). Returns ``directory``.

    Raises:
        TypeError: not a TokenClassifier / SequenceRegressor over a supported encoder.
        performers.utils.DiskWriteError: the file system refused a write.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    config = finetuned_config(model, **details)
    encoder_dir = directory / ENCODER_DIRECTORY
    if isinstance(model.encoder, HuggingFaceEncoder):
        model.encoder.backbone.save_pretrained(encoder_dir)
        if model.encoder.hf_tokenizer is not None:
            model.encoder.hf_tokenizer.save_pretrained(str(encoder_dir))
    else:
        save_pretrained(model.encoder, encoder_dir)
        tokenizer.save(encoder_dir / "tokenizer.json")
    head = {name: t.detach().to("cpu").contiguous() for name, t in model.head.state_dict().items()}
    atomic_write(directory / HEAD_WEIGHTS, lambda tmp: save_file(head, str(tmp)))
    tokenizer.save(directory / "tokenizer.json")
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(directory / "config.json", lambda tmp: tmp.write_text(text))
    return directory


def _field(config: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = config.get(name)
    if not isinstance(value, kind):
        raise ModelLoadError(f"{path}: a fine-tuned model's config.json needs {name!r}, got {value!r}")
    return value


def finetuned_from_config(
    config: dict[str, Any], encoder: nn.Module, directory: Path, tokenizer: ProteinTokenizer
) -> TokenClassifier | SequenceRegressor:
    """The fine-tuned model that ``config`` (its ``config.json``) describes, on the loaded
    ``encoder``, with the head weights of ``directory/head.safetensors``; in eval mode.

    Raises:
        ModelLoadError: a config of another format or missing a field, or head weights that
            are missing, unreadable or of the wrong shape (naming the file).
    """
    from performers.utils import load_safetensors

    path = directory / "config.json"
    if config.get(FINETUNED_KEY) != FINETUNED_FORMAT:
        raise ModelLoadError(
            f"{path}: fine-tuned model format {config.get(FINETUNED_KEY)!r}; this version reads "
            f"format {FINETUNED_FORMAT}"
        )
    task = _field(config, "task", str, path)
    if task == "tokens":
        classes = _field(config, "classes", list, path)
        model: TokenClassifier | SequenceRegressor = TokenClassifier(encoder, len(classes), classes)
    elif task == "regression":
        model = SequenceRegressor(encoder, tokenizer.special_ids)
    else:
        raise ModelLoadError(f"{path}: task must be 'tokens' or 'regression', got {task!r}")
    weights = directory / HEAD_WEIGHTS
    try:
        tensors, _ = load_safetensors(weights)
        model.head.load_state_dict(tensors, strict=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{weights}: missing (the fine-tuned model's head)") from None
    except (RuntimeError, ValueError) as error:  # missing/unexpected/mis-shaped tensors, unreadable
        raise ModelLoadError(f"{weights}: cannot load the head: {' '.join(str(error).split())}") from None
    return model.eval()
