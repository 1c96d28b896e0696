"""Fine-tuning a protein encoder on labelled data, with the project's one training loop.

Per-residue classification (FLIP secondary structure: Q3; conservation: 9 classes) puts a linear
head on every residue (:class:`TokenClassifier`); sequence-level regression (FLIP GB1 fitness)
puts one on the mean of the residues' hidden states (:class:`SequenceRegressor`). :func:`finetune`
trains the encoder and the head together (or the head alone with ``freeze_encoder=True``, a
linear probe) with :class:`~performers.training.Trainer` — AdamW, the warm-up/cosine schedule,
feature redraws of the encoder's FAVOR layers, validation, checkpoints with exact resume — and
evaluates on the test split: accuracy over scored residues (Q3 for secondary structure), or
Spearman correlation and MSE for regression. :func:`labelled_splits` reads the labelled data and
:func:`finetuning_encoder` makes the encoder, as ``performers finetune`` chooses them: this
package's, or a Hugging Face ESM / ProtBert base model wrapped by :class:`HuggingFaceEncoder`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from performers.jobs.hf_protein_lm import HuggingFaceProteinLM, protein_lm_from_directory
from performers.jobs.protein_models import protein_model_source
from performers.jobs.proteins import load_trained
from performers.models import PerformerConfig, PerformerModel
from performers.proteins import (
    LabelledExamples,
    ProteinTokenizer,
    ResidueLabels,
    SequenceTargets,
    load_shipped_task,
)
from performers.training import Trainer, TrainingConfig, evaluate_regression, evaluate_tokens, resolve_device
from performers.utils import InputError

__all__ = [
    "HuggingFaceEncoder",
    "SequenceRegressor",
    "TokenClassifier",
    "evaluate_labelled",
    "finetune",
    "finetuning_encoder",
    "labelled_splits",
]


class HuggingFaceEncoder(nn.Module):
    """A Hugging Face protein encoder (its base model: ESM, ProtBert) fed this package's
    protein-tokenizer ids, so that the labelled data, the heads and the training loop stay as
    they are: each :class:`~performers.proteins.ProteinTokenizer` id (``<pad>``, ``<mask>``,
    ``<cls>``, ``<eos>``, ``<unk>``, each residue letter) is looked up in the model's own
    vocabulary. Both lay a protein out ``[<cls>, residues..., <eos>]``, one token per residue;
    a tokenizer whose tokens span several residues (ProtGPT2's) cannot be mapped and is refused.
    ``config.d_model`` is the model's hidden size (what the heads read)."""

    def __init__(self, lm: HuggingFaceProteinLM, tokenizer: ProteinTokenizer | None = None) -> None:
        super().__init__()
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
        self.register_buffer("vocabulary", torch.tensor(table, dtype=torch.long), persistent=False)
        self.backbone = lm.model.base_model
        self.config = SimpleNamespace(d_model=lm.hidden_size, source=str(path))

    def forward(self, input_ids: Tensor, attention_mask: Tensor):
        return self.backbone(input_ids=self.vocabulary[input_ids], attention_mask=attention_mask)


class TokenClassifier(nn.Module):
    """A Performer encoder with a linear per-residue head: logits ``(B, L, classes)``."""

    def __init__(self, encoder: PerformerModel | HuggingFaceEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.d_model, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask).last_hidden_state)


class SequenceRegressor(nn.Module):
    """A Performer encoder, the mean of its residues' hidden states (special tokens and padding
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


def evaluate_labelled(
    model: nn.Module, examples: LabelledExamples, batch_size: int, max_batches=None
) -> dict:
    """Accuracy over scored residues (``ResidueLabels``) or Spearman and MSE (``SequenceTargets``)."""
    batches = examples.batches(batch_size, max_batches)
    if examples.data.kind == "regression":
        return evaluate_regression(model, batches)
    return evaluate_tokens(model, batches, causal=False)


def finetune(
    encoder: PerformerModel,
    training: TrainingConfig,
    *,
    train: ResidueLabels | SequenceTargets,
    valid: ResidueLabels | SequenceTargets,
    test: ResidueLabels | SequenceTargets,
    out_dir: str | Path,
    freeze_encoder: bool = False,
    resume: bool = False,
    device: str | torch.device = "cpu",
    log=print,
) -> dict:
    """Train a head (and the encoder unless frozen) on ``train``; evaluate on ``valid`` every
    ``training.eval_every`` steps (at most ``eval_batches`` batches) and on ``test`` at the end.

    ``training.task`` is set from the data (``"tokens"`` or ``"regression"``); checkpoints and
    metrics go under ``out_dir``. The head is initialized after ``torch.manual_seed(training.seed)``
    (on the CPU), then the model moves to ``device`` (``"cuda"``, ``"auto"``:
    :func:`~performers.training.resolve_device`), where it trains and is evaluated.

    Returns:
        ``{"test": metrics, "valid": the last validation metrics, "steps": steps trained}``;
        metrics are ``accuracy``/``perplexity``/``tokens`` (per residue) or
        ``spearman``/``mse``/``count`` (regression).
    """
    kinds = {train.kind, valid.kind, test.kind}
    if len(kinds) != 1:
        raise ValueError(f"train, valid and test must be the same kind of data, got {sorted(kinds)}")
    training = replace(training, task=train.kind)
    tokenizer = ProteinTokenizer()
    examples = {name: LabelledExamples(data, tokenizer, training.max_length) for name, data in
                (("train", train), ("valid", valid), ("test", test))}  # fmt: skip
    torch.manual_seed(training.seed)
    if train.kind == "regression":
        model: nn.Module = SequenceRegressor(encoder, tokenizer.special_ids)
    else:
        model = TokenClassifier(encoder, len(train.classes))
    if freeze_encoder:
        encoder.requires_grad_(False)
    model.to(resolve_device(device))

    def validate(model: nn.Module) -> dict[str, float]:
        return evaluate_labelled(model, examples["valid"], training.batch_size, training.eval_batches)

    trainer = Trainer(model, examples["train"], training, out_dir, evaluate=validate, log=log)
    last = trainer.fit(resume=resume)
    return {
        "test": evaluate_labelled(model, examples["test"], training.batch_size),
        "valid": last,
        "steps": trainer.step,
    }


def labelled_splits(
    *,
    task: str | None = None,
    sequences: str | Path | None = None,
    labels: str | Path | None = None,
    mask: str | Path | None = None,
    targets: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> dict[str, LabelledExamples]:
    """``{"train", "valid", "test"}`` of one kind of labelled data: a sequence-level regression
    FASTA (``targets``, ``TARGET=`` and split tags in the headers), your per-residue task
    (``sequences`` and ``labels`` FASTA files, optional ``mask``), or a FLIP task shipped with the
    package (``task``, default ``"secondary_structure"``). ``train_limit``/``test_limit``: the
    first N proteins of those splits.

    Raises:
        ValueError: a malformed or inconsistent file, or an unknown task (naming it).
        OSError: a missing or unreadable file.
    """
    limits = {"train": train_limit, "valid": None, "test": test_limit}
    if targets:
        return {s: SequenceTargets.load(targets, split=s, limit=n) for s, n in limits.items()}
    if sequences or labels:
        return {
            s: ResidueLabels.load(sequences, labels, mask=mask, split=s, limit=n) for s, n in limits.items()
        }
    return {s: load_shipped_task(task or "secondary_structure", s, n) for s, n in limits.items()}


def _is_huggingface(path: str | Path) -> bool:
    try:
        return protein_model_source(path) == "huggingface"
    except (OSError, ValueError):
        return False  # load_trained names what is wrong with it


def finetuning_encoder(
    pretrained: str | Path | None,
    *,
    random_init: bool = False,
    config: PerformerConfig | None = None,
    seed: int = 0,
) -> tuple[PerformerModel | HuggingFaceEncoder, str]:
    """``(encoder, where it comes from)``: the encoder of the trained model in ``pretrained``;
    with ``random_init``, its architecture randomly initialized after ``torch.manual_seed(seed)``
    (the control run); without ``pretrained``, a new ``PerformerModel(config)`` initialized after
    ``torch.manual_seed(seed)``. A Hugging Face protein model directory (ESM, ProtBert) gives a
    :class:`HuggingFaceEncoder` of its base model.

    Raises:
        InputError: a Hugging Face model with ``random_init``, or one whose tokens span several
            residues (ProtGPT2), naming the directory.
    """
    if pretrained and _is_huggingface(pretrained):
        if random_init:
            raise InputError(
                f"{pretrained}: --random-init re-initializes performers models only; for a Hugging "
                "Face backbone, compare with a performers model of similar size"
            )
        lm = protein_lm_from_directory(pretrained)
        return HuggingFaceEncoder(lm), f"{pretrained} (Hugging Face {lm.protein_model.family})"
    if pretrained and random_init:
        architecture = load_trained(pretrained)[0].config
        torch.manual_seed(seed)
        return PerformerModel(architecture), f"random initialization (architecture of {pretrained})"
    if pretrained:
        model, _ = load_trained(pretrained)
        return (model.model if hasattr(model, "model") else model), str(pretrained)
    if config is None:
        raise TypeError("finetuning_encoder needs a pretrained directory or a config")
    torch.manual_seed(seed)
    return PerformerModel(config), "random initialization"
