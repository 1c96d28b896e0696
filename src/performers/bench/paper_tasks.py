"""The three tasks of the paper's wider evidence, behind one interface for the benchmarks:

* ``"proteins"`` — the masked protein LM on the shipped corpus (accuracy and perplexity on the
  masked residues of the test split);
* ``"text"`` — a character-level causal LM on Tiny Shakespeare (bits per character on the
  validation text: the last 10 %, cut into windows of the context length);
* ``"pixels"`` — autoregressive MNIST, 784 pixels per image with a 256-way softmax (bits per
  dimension on the 1,000 test images).

A :class:`TaskSpec` is small and picklable (runs happen in fresh processes); :meth:`TaskSpec.build`
reads the data and returns the training examples, the evaluators and the vocabulary. A model
for a task is :func:`task_model_config` of a :class:`ModelSize` and an attention *variant name*
(:func:`variant_config`): ``exact``, ``local`` (sliding window), ``linear`` (the Linear
Transformer: ``elu + 1`` features, no projection), or ``favor-<kernel>`` for any registered
kernel with a random projection (``favor-softmax`` is FAVOR+, ``favor++`` is FAVOR++).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from torch import Tensor, nn

from performers.images import PIXEL_LEVELS, PixelSequences, bits_per_dimension, load_mnist, pixel_batches
from performers.jobs.protein_evaluation import corpus_splits, protein_evaluator
from performers.layers import FavorConfig
from performers.models import PerformerConfig
from performers.ops import KERNELS
from performers.proteins import LanguageModelExamples, ProteinTokenizer
from performers.text import (
    CharVocabulary,
    TextWindows,
    bits_per_character,
    load_tiny_shakespeare,
    window_batches,
)
from performers.training import TrainingConfig
from performers.training.evaluation import evaluation_mode, logits_of, masked_accuracy, model_batches
from performers.utils.validation import is_int

__all__ = [
    "TASKS",
    "BuiltTask",
    "ModelSize",
    "TaskSpec",
    "causal_scores",
    "task_model_config",
    "variant_config",
    "variant_names",
]

TASKS = ("proteins", "text", "pixels")
# The metric of each task, and whether lower is better.
METRICS = {
    "proteins": ("accuracy", False),
    "text": ("bits_per_character", True),
    "pixels": ("bits_per_dimension", True),
}
PIXEL_SEQUENCE = 28 * 28 + 1  # BOS + 784 pixels


def variant_names() -> list[str]:
    """Every attention variant name :func:`variant_config` accepts."""
    return ["exact", "local", "linear", *(f"favor-{k}" for k in KERNELS if k != "favor++"), "favor++"]


def variant_config(name: str, base: PerformerConfig) -> PerformerConfig:
    """``base`` with the attention of variant ``name`` (see the module docstring)."""
    if name in ("exact", "local"):
        return replace(base, attention=name)
    if name == "linear":
        return replace(base, attention="favor", favor=replace(base.favor, kernel="elu", num_features=None))
    if name == "favor++":
        return replace(base, attention="favor", favor=replace(base.favor, kernel="favor++"))
    if name.startswith("favor-") and name[len("favor-") :] in KERNELS:
        return replace(base, attention="favor", favor=replace(base.favor, kernel=name[len("favor-") :]))
    raise ValueError(f"unknown attention variant {name!r}; known: {', '.join(variant_names())}")


@dataclass(frozen=True)
class ModelSize:
    """The sizes every variant of a comparison shares."""

    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 512
    num_features: int = 128
    window: int = 64
    dropout: float = 0.1


def task_model_config(task: str, size: ModelSize, variant: str, *, max_length: int) -> PerformerConfig:
    """The :class:`PerformerConfig` of ``variant`` on ``task`` (vocabulary, lengths, padding)."""
    if task == "proteins":
        tokenizer = ProteinTokenizer()
        vocab, pad, length = len(tokenizer), tokenizer.pad_id, max_length
    elif task == "text":
        vocab, pad, length = len(CharVocabulary.from_text(load_tiny_shakespeare()[0])), None, max_length
    elif task == "pixels":
        vocab, pad, length = PIXEL_LEVELS + 1, None, PIXEL_SEQUENCE
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    base = PerformerConfig(
        vocab_size=vocab,
        d_model=size.d_model,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        d_ff=size.d_ff,
        max_position_embeddings=length,
        dropout=size.dropout,
        attention_window=size.window,
        favor=FavorConfig(num_features=size.num_features),
        pad_token_id=pad,
    )
    return variant_config(variant, base)


def causal_scores(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], *, classes: int | None = None
) -> dict[str, float]:
    """Next-token NLL (nats), accuracy and count over every predicted position of ``batches``.

    ``classes``: score only the first ``classes`` outputs (the pixel levels: the start token is
    never a target, so the distribution is renormalized over the 256 levels).
    """
    nll, correct, count = 0.0, 0, 0
    with evaluation_mode(model):
        for batch in model_batches(model, batches):
            logits = logits_of(model(batch["input_ids"], batch["attention_mask"]))
            if classes is not None:
                logits = logits[..., :classes]
            right, counted, summed = masked_accuracy(logits, batch["labels"], causal=True)
            nll, correct, count = nll + summed, correct + right, count + counted
    return {"nll": nll / count, "accuracy": correct / count, "count": count}


@dataclass
class BuiltTask:
    """What a run needs: training examples, ``evaluate`` (during training, cheap) and
    ``final_evaluate`` (the reported numbers), and the token-level objective."""

    examples: object
    evaluate: Callable[[nn.Module], dict[str, float]]
    final_evaluate: Callable[[nn.Module], dict[str, float]]
    objective: str


def _text_metrics(scores: dict[str, float]) -> dict[str, float]:
    return {
        "bits_per_character": bits_per_character(scores["nll"]),
        "accuracy": scores["accuracy"],
        "loss": scores["nll"],
    }


def _pixel_metrics(scores: dict[str, float]) -> dict[str, float]:
    return {"bits_per_dimension": bits_per_dimension(scores["nll"]), "loss": scores["nll"]}


@dataclass(frozen=True)
class TaskSpec:
    """One task and its data limits (picklable).

    ``max_length``: tokens per protein crop / text window (pixels: always 785).
    ``eval_limit``: proteins — validation batches during training; text — windows; pixels — test
    images, during training (curves). ``final_limit``: the same for the reported evaluation
    (None: all test proteins / validation windows / 1,000 test images). ``train_limit``: cap on
    training proteins or images (None: all).
    """

    name: str
    max_length: int = 256
    eval_limit: int = 8
    final_limit: int | None = None
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.name!r}")
        for name in ("max_length", "eval_limit", "final_limit", "train_limit"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(
                    f"TaskSpec.{name} must be an int >= 1 (or None where allowed), got {value!r}"
                )
        if self.name == "text" and self.max_length < 2:
            raise ValueError(f"TaskSpec.max_length must be >= 2 for text windows, got {self.max_length}")

    @property
    def metric(self) -> tuple[str, bool]:
        """``(name, lower_is_better)`` of the headline metric."""
        return METRICS[self.name]

    @property
    def objective(self) -> str:
        return "mlm" if self.name == "proteins" else "clm"

    def training_config(self, **options) -> TrainingConfig:
        """A :class:`TrainingConfig` with this task's objective and length."""
        length = PIXEL_SEQUENCE if self.name == "pixels" else self.max_length
        return TrainingConfig(task=self.objective, max_length=length, **options)

    def build(self, training: TrainingConfig) -> BuiltTask:
        if self.name == "proteins":
            train, valid, test = corpus_splits(None, training, self.train_limit, self.final_limit)
            tokenizer = ProteinTokenizer()
            examples = LanguageModelExamples(
                train, tokenizer, task="mlm", max_length=self.max_length, mask_prob=training.mask_prob
            )
            return BuiltTask(
                examples,
                protein_evaluator(tokenizer, valid, training, self.eval_limit),
                protein_evaluator(tokenizer, test, training),
                "mlm",
            )
        if self.name == "text":
            train_text, valid_text = load_tiny_shakespeare()
            vocabulary = CharVocabulary.from_text(train_text)
            train_ids, valid_ids = vocabulary.encode(train_text), vocabulary.encode(valid_text)
            length = self.max_length

            def evaluate(model, limit=self.eval_limit):
                return _text_metrics(
                    causal_scores(
                        model,
                        window_batches(valid_ids, length, batch_size=training.batch_size, max_windows=limit),
                    )
                )

            return BuiltTask(
                TextWindows(train_ids, length),
                evaluate,
                lambda model: evaluate(model, self.final_limit),
                "clm",
            )
        train_images, test_images = load_mnist()
        if self.train_limit is not None:
            train_images = train_images[: self.train_limit]

        def evaluate_pixels(model, limit=self.eval_limit):
            images = test_images if limit is None else test_images[:limit]
            return _pixel_metrics(
                causal_scores(model, pixel_batches(images, training.batch_size), classes=PIXEL_LEVELS)
            )

        return BuiltTask(
            PixelSequences(train_images),
            evaluate_pixels,
            lambda model: evaluate_pixels(model, self.final_limit),
            "clm",
        )
