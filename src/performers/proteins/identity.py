"""What a protein training run learns from, as JSON values recorded in its checkpoints
(``TrainingConfig.data_identity``): a resume compares them, so a run is never continued on other
data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from performers.proteins.data import default_corpus
from performers.proteins.prepared_dataset import MANIFEST
from performers.utils import sha256

__all__ = ["training_data_identity"]


def training_data_identity(corpus: str | Path | None, train_limit: int | None) -> dict[str, Any]:
    """``{"train_sha256", "train_limit"}`` of a run on ``corpus``'s training split: the SHA-256 of
    the training split's entry in a prepared dataset's manifest (its files' SHA-256 and counts:
    the same data prepared twice gives the same identity) or of the shipped corpus file (``corpus``
    None), and ``train_limit`` (the first N training proteins; None: all)."""
    if corpus is None:
        digest = sha256(default_corpus())
    else:
        manifest = json.loads((Path(corpus) / MANIFEST).read_text())
        entry = {key: manifest.get(key) for key in ("format_version", "token_dtype", "vocab_size")}
        entry["train"] = manifest["splits"].get("train")
        digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    return {"train_sha256": digest, "train_limit": train_limit}
