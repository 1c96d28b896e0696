"""Token-level evaluation: accuracy and perplexity over the labelled positions of batches."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from performers.ops import flush_underflow_warnings
from performers.training.devices import model_device, to_device
from performers.training.metrics import spearman
from performers.utils import IGNORE_INDEX

__all__ = [
    "evaluate_regression",
    "evaluate_tokens",
    "evaluation_mode",
    "logits_of",
    "masked_accuracy",
    "model_batches",
    "row_token_metrics",
]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd inside the block; the training flag is restored,
    and underflow counts made on a GPU inside it are reported at its end."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        flush_underflow_warnings()


def model_batches(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """``batches`` (built on the CPU) one by one on the device of ``model``'s parameters."""
    device = model_device(model)
    for batch in batches:
        yield to_device(batch, device)


def logits_of(output) -> Tensor:
    """The logits of a model output: an object with ``.logits`` (the Performer models, Hugging
    Face) or the tensor itself."""
    return output if isinstance(output, Tensor) else output.logits


def masked_accuracy(logits: Tensor, labels: Tensor, causal: bool) -> tuple[int, int, float]:
    """``(correct, counted, summed NLL)`` over positions with a label (shifted when causal).

    ``logits``: ``(B, L, V)``; ``labels``: ``(B, L)``, :data:`~performers.utils.IGNORE_INDEX`
    where there is nothing to predict. Causal: position ``t`` predicts ``labels[t + 1]``.
    """
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    picked = logits[keep].float()
    target = labels[keep]
    nll = nn.functional.cross_entropy(picked, target, reduction="sum").item() if target.numel() else 0.0
    return int((picked.argmax(-1) == target).sum()), int(target.numel()), nll


def row_token_metrics(logits: Tensor, labels: Tensor, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of a batch: ``(correct, counted, summed NLL)``, each ``(B,)``, over labelled
    positions (shifted when causal), as :func:`masked_accuracy` counts them for the whole batch."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    safe = labels.masked_fill(~keep, 0)
    nll = nn.functional.cross_entropy(logits.float().transpose(1, 2), safe, reduction="none") * keep
    correct = (logits.argmax(-1) == labels) & keep
    return correct.sum(-1), keep.sum(-1), nll.sum(-1)


def evaluate_tokens(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], *, causal: bool
) -> dict[str, float]:
    """Accuracy and perplexity of ``model`` over every labelled position of ``batches``.

    Each batch holds ``input_ids``, ``attention_mask`` and ``labels`` ``(B, L)``. The model runs
    in eval mode (its training flag is restored). Returns ``{"accuracy", "perplexity",
    "tokens"}``.

    Raises:
        ValueError: no batch held a labelled position.
    """
    correct = counted = 0
    nll = 0.0
    with evaluation_mode(model):
        for batch in model_batches(model, batches):
            logits = logits_of(model(batch["input_ids"], batch["attention_mask"]))
            right, n, loss = masked_accuracy(logits, batch["labels"], causal=causal)
            correct, counted, nll = correct + right, counted + n, nll + loss
    if counted == 0:
        raise ValueError("evaluation set produced no labelled position")
    return {"accuracy": correct / counted, "perplexity": math.exp(nll / counted), "tokens": counted}


def evaluate_regression(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
    """Spearman correlation and mean squared error of ``model``'s predictions ``(B,)`` against
    each batch's ``targets`` ``(B,)``. Returns ``{"spearman", "mse", "count"}``."""
    predictions, targets = [], []
    with evaluation_mode(model):
        for batch in model_batches(model, batches):
            # (On the CPU: the rank correlation walks its values one by one.)
            predictions.append(logits_of(model(batch["input_ids"], batch["attention_mask"])).double().cpu())
            targets.append(batch["targets"].double().cpu())
    if not predictions:
        raise ValueError("evaluation set is empty")
    prediction, target = torch.cat(predictions), torch.cat(targets)
    return {
        "spearman": spearman(prediction, target),
        "mse": float((prediction - target).pow(2).mean()),
        "count": len(target),
    }
