"""The STS Benchmark (Cer et al. 2017) shipped with the package: sentence pairs with human
similarity scores."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import Tensor

from performers.utils import shipped_data

__all__ = ["load_stsb"]


def load_stsb(split: str, directory: str | Path | None = None) -> tuple[list[str], list[str], Tensor]:
    """STS-B ``split`` (``"train"`` or ``"test"``): ``(sentences1, sentences2, scores (N,))``.

    The files are tab-separated without quoting (``"`` occurs inside sentences); the first
    seven fields are genre, file, year, id, score, sentence 1, sentence 2. ``directory``
    defaults to the copy shipped with the package (``performers/data/text/stsb``, see its
    SOURCE.md).
    """
    directory = shipped_data("text", "stsb") if directory is None else Path(directory)
    path = directory / f"sts-{split}.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: STS-B split {split!r} not found")
    first, second, scores = [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 7:
                raise ValueError(
                    f"{path}:{number}: expected at least 7 tab-separated fields, got {len(fields)}"
                )
            scores.append(float(fields[4]))
            first.append(fields[5])
            second.append(fields[6])
    return first, second, torch.tensor(scores, dtype=torch.float64)
