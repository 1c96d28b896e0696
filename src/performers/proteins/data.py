"""Protein datasets: splits from header tags, crops, concatenation into long windows, batch
collation for masked (BID) and autoregressive (UNI) language modelling, the training examples
the trainer draws (:class:`LanguageModelExamples`) and the fixed evaluation batches.

Every random choice goes through an explicit :class:`torch.Generator`, so a run (and a resumed
run) sees the same crops and masks. Nothing here knows models or training loops.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from performers.proteins.fasta import FastaRecord, header_split, read_fasta
from performers.proteins.tokenizer import ProteinTokenizer
from performers.utils import IGNORE_INDEX, shipped_data

__all__ = [
    "CORPUS_NAME",
    "CausalLMCollator",
    "ConcatenatedWindows",
    "LanguageModelExamples",
    "MaskedLMCollator",
    "PreparedSequences",
    "PreparedWindows",
    "ProteinSequences",
    "UnigramBaseline",
    "default_corpus",
    "evaluation_batches",
    "first_records",
    "item_generator",
    "pad_batch",
    "read_split",
    "split_of",
]

CORPUS_NAME = "mlm_corpus_refseq17.fasta.gz"


def default_corpus() -> Path:
    """The RefSeq protein corpus shipped with the package (train/valid/test tagged; see
    ``performers/data/proteins/SOURCE.md``)."""
    return shipped_data("proteins", CORPUS_NAME)


def split_of(record: FastaRecord) -> str:
    """``"train" | "valid" | "test"`` from ``split=`` (RefSeq corpus) or FLIP's ``SET=`` /
    ``VALIDATION=`` tags; a record with neither is an error naming it."""
    split = header_split(record.header)
    if split is None:
        raise ValueError(f"record {record.id!r} has no split tag (split=... or SET=...) in its header")
    return split


def read_split(path: str | os.PathLike, split: str, **fasta_kwargs) -> list[str]:
    """Sequences of one split of a tagged FASTA file.

    The file is parsed once per process for every split (a run reads train, valid and test of
    the same corpus); the cache is keyed by the file's path, size and modification time and the
    reader options, so a changed file is read again.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    stat = os.stat(path)
    options = tuple(sorted(fasta_kwargs.items()))
    return list(_read_splits(os.fspath(path), stat.st_size, stat.st_mtime_ns, options).get(split, ()))


@functools.lru_cache(maxsize=4)
def _read_splits(path: str, _size: int, _mtime_ns: int, options: tuple) -> dict[str, tuple[str, ...]]:
    splits: dict[str, list[str]] = {}
    for record in read_fasta(path, **dict(options)):
        splits.setdefault(split_of(record), []).append(record.sequence)
    return {name: tuple(sequences) for name, sequences in splits.items()}


class ProteinSequences(Dataset):
    """One protein per item, as token ids ``[<cls>, residues..., <eos>]`` of at most ``max_length``.

    Longer proteins are cropped to ``max_length - 2`` residues: at a random offset drawn from
    ``generator`` when ``random_crop`` (training), at the start otherwise (evaluation, fixed).
    """

    def __init__(
        self,
        sequences: Sequence[str],
        tokenizer: ProteinTokenizer,
        max_length: int,
        *,
        random_crop: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (cls, a residue, eos), got {max_length}")
        self.sequences = list(sequences)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.random_crop = random_crop
        self.generator = generator

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Tensor:
        return self.get(index, self.generator)

    def get(self, index: int, generator: torch.Generator | None) -> Tensor:
        """Item ``index``, cropping (when ``random_crop``) with the given generator."""
        sequence = self.sequences[index]
        room = self.max_length - 2
        if len(sequence) > room:
            start = _crop_start(len(sequence), room, self.random_crop, generator)
            sequence = sequence[start : start + room]
        return torch.tensor(self.tokenizer.encode(sequence), dtype=torch.long)


def _crop_start(residues: int, room: int, random_crop: bool, generator: torch.Generator | None) -> int:
    """Start of the ``room`` residues kept of a longer protein: 0, or uniform when ``random_crop``."""
    if not random_crop:
        return 0
    return int(torch.randint(0, residues - room + 1, (1,), generator=generator))


class PreparedSequences(Dataset):
    """:class:`ProteinSequences` over a split of a prepared dataset
    (:class:`performers.proteins.prepared.PreparedDataset`): the same items, crops and random
    draws, read from the memory-mapped token shards instead of residue strings."""

    def __init__(self, split, max_length: int, *, random_crop: bool = False) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (cls, a residue, eos), got {max_length}")
        self.split, self.max_length, self.random_crop = split, max_length, random_crop

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Tensor:
        return self.get(index, None)

    def get(self, index: int, generator: torch.Generator | None) -> Tensor:
        """Item ``index`` (``[<cls>, residues..., <eos>]``), cropped like :class:`ProteinSequences`."""
        ids = torch.from_numpy(self.split.tokens(index).astype(np.int64))
        room = self.max_length - 2
        residues = ids.numel() - 2
        if residues > room:
            start = 1 + _crop_start(residues, room, self.random_crop, generator)
            ids = torch.cat([ids[:1], ids[start : start + room], ids[-1:]])
        return ids


class PreparedWindows(Dataset):
    """:class:`ConcatenatedWindows` over a split of a prepared dataset: window ``i`` is tokens
    ``[i·w, (i+1)·w)`` of the split's token stream, read on demand (nothing is held in memory)."""

    def __init__(self, split, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.split, self.window = split, window

    def __len__(self) -> int:
        return self.split.num_tokens // self.window

    def __getitem__(self, index: int) -> Tensor:
        return self.get(index)

    def get(self, index: int, generator: torch.Generator | None = None) -> Tensor:
        """Window ``index`` (``generator`` unused: windows are fixed)."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range ({len(self)} windows)")
        start = index * self.window
        return torch.from_numpy(self.split.stream(start, start + self.window).astype(np.int64))


class ConcatenatedWindows(Dataset):
    """Proteins joined as ``<cls> P1 <eos> <cls> P2 <eos> ...`` and cut into windows of ``window``
    tokens (the paper's concatenated-TrEMBL setting, e.g. ``window = 8192``); the last
    incomplete window is dropped."""

    def __init__(self, sequences: Iterable[str], tokenizer: ProteinTokenizer, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        ids: list[int] = []
        for sequence in sequences:
            ids.extend(tokenizer.encode(sequence))
        usable = len(ids) // window * window
        self.windows = torch.tensor(ids[:usable], dtype=torch.long).view(-1, window)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.windows[index]

    def get(self, index: int, generator: torch.Generator | None = None) -> Tensor:
        """Window ``index`` (windows are fixed: ``generator`` is accepted for symmetry with
        :meth:`ProteinSequences.get` and unused)."""
        return self.windows[index]


def pad_batch(parts: Sequence[dict[str, Tensor]], pad_id: int) -> dict[str, Tensor]:
    """Stack collated single-item batches into one batch.

    Token tensors ``(1, L_i)`` (``input_ids``, ``attention_mask``, ``labels``) are padded to
    ``(B, max L_i)`` (with the pad id, 0 and the ignored label); any other tensor (e.g. a
    sequence-level ``targets`` ``(1,)``) is concatenated along the batch.
    """
    length = max(p["input_ids"].shape[1] for p in parts)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key in parts[0]:
        if key not in fill:
            out[key] = torch.cat([p[key] for p in parts])
            continue
        out[key] = torch.full((len(parts), length), fill[key], dtype=torch.long)
        for row, p in enumerate(parts):
            out[key][row, : p[key].shape[1]] = p[key][0]
    return out


def _pad(batch: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    length = max(t.numel() for t in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, t in enumerate(batch):
        ids[row, : t.numel()] = t
        mask[row, : t.numel()] = 1
    return ids, mask


@dataclass
class MaskedLMCollator:
    """Pad a batch and corrupt it for masked LM (BERT's recipe, used by the paper's BID models).

    Each residue token is selected with probability ``mask_prob``; a selected token becomes
    ``<mask>`` with probability 0.8, a random residue with 0.1, and stays with 0.1. Special and
    padding tokens are never selected. ``labels`` hold the original id at selected positions
    and -100 elsewhere. Returns ``{"input_ids", "attention_mask", "labels"}``, each ``(B, L)``.
    """

    tokenizer: ProteinTokenizer
    mask_prob: float = 0.15
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")

    def __call__(self, batch: Sequence[Tensor]) -> dict[str, Tensor]:
        tok = self.tokenizer
        ids, attention = _pad(batch, tok.pad_id)
        residue = ids >= len(tok.special_ids)
        draw = torch.rand(ids.shape, generator=self.generator)
        selected = residue & (draw < self.mask_prob)
        # Split the selected positions 80/10/10 with a second, independent draw.
        action = torch.rand(ids.shape, generator=self.generator)
        to_mask = selected & (action < 0.8)
        to_random = selected & (action >= 0.8) & (action < 0.9)
        random_ids = torch.randint(
            tok.residue_ids.start, tok.residue_ids.stop, ids.shape, generator=self.generator
        )
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
        corrupted = torch.where(to_mask, torch.full_like(ids, tok.mask_id), ids)
        corrupted = torch.where(to_random, random_ids, corrupted)
        return {"input_ids": corrupted, "attention_mask": attention, "labels": labels}


@dataclass
class CausalLMCollator:
    """Pad a batch for next-token prediction; ``labels`` are the ids with padding set to -100
    (the causal LM shifts them by one position itself)."""

    tokenizer: ProteinTokenizer

    def __call__(self, batch: Sequence[Tensor]) -> dict[str, Tensor]:
        ids, attention = _pad(batch, self.tokenizer.pad_id)
        labels = ids.masked_fill(attention == 0, IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}


class UnigramBaseline:
    """The paper's "empirical baseline": predict from residue frequencies of the training split.

    Accuracy is the share of evaluated residues equal to the most frequent training residue;
    perplexity is ``exp`` of the cross-entropy of the evaluated residues under the training
    unigram distribution (add-one smoothed over the residue vocabulary, so it is finite).
    Sequences are residue strings or a prepared split (counted from its token stream).
    """

    def __init__(self, train_sequences, tokenizer: ProteinTokenizer) -> None:
        counts = _residue_counts(train_sequences, tokenizer)
        letters = tokenizer.residues
        total = sum(counts[c] for c in letters) + len(letters)
        self.tokenizer = tokenizer
        self.probabilities = {c: (counts[c] + 1) / total for c in letters}
        self.most_frequent = max(letters, key=lambda c: counts[c])

    def to_dict(self) -> dict:
        """``{"probabilities": {letter: p}, "most_frequent": letter}`` (JSON-able; see
        :meth:`from_dict`): what ``results.json`` keeps so that a later evaluation of the model
        compares it with the unigram of its own training split."""
        return {"probabilities": dict(self.probabilities), "most_frequent": self.most_frequent}

    @classmethod
    def from_dict(cls, data: dict, tokenizer: ProteinTokenizer) -> UnigramBaseline:
        """The baseline :meth:`to_dict` described."""
        baseline = cls.__new__(cls)
        baseline.tokenizer = tokenizer
        baseline.probabilities = {str(c): float(p) for c, p in data["probabilities"].items()}
        baseline.most_frequent = str(data["most_frequent"])
        return baseline

    def evaluate(self, sequences) -> dict[str, float]:
        correct = n = 0
        nll = 0.0
        if _is_prepared(sequences):
            counts = _residue_counts(sequences, self.tokenizer)
            n = sum(counts[c] for c in self.probabilities)
            correct = counts[self.most_frequent]
            nll = -sum(counts[c] * math.log(p) for c, p in self.probabilities.items())
        else:
            for sequence in sequences:
                for c in sequence:
                    p = self.probabilities.get(c)
                    if p is None:
                        continue
                    n += 1
                    correct += c == self.most_frequent
                    nll -= math.log(p)
        if n == 0:
            raise ValueError("no residue to evaluate")
        return {"accuracy": correct / n, "perplexity": math.exp(nll / n), "residues": n}


def _residue_counts(source, tokenizer: ProteinTokenizer, chunk: int = 1 << 24) -> Counter:
    """Residue letter → count over residue strings or a prepared split's token stream."""
    counts: Counter = Counter()
    if not _is_prepared(source):
        for sequence in source:
            counts.update(sequence)
        return counts
    ids = np.zeros(len(tokenizer), dtype=np.int64)
    for start in range(0, source.num_tokens, chunk):
        ids += np.bincount(
            source.stream(start, min(start + chunk, source.num_tokens)), minlength=len(tokenizer)
        )
    for token, count in zip(tokenizer.tokens, ids.tolist(), strict=True):
        if len(token) == 1:  # residues (special tokens are <...>)
            counts[token] = count
    return counts


class FirstRecords:
    """The first ``n`` records of a prepared split, itself usable as a prepared split (the records
    of a split are a prefix of its token stream)."""

    def __init__(self, split, n: int) -> None:
        self.split, self.n = split, min(n, len(split))
        self.num_tokens = int(np.asarray(split.lengths[: self.n], dtype=np.int64).sum())

    def __len__(self) -> int:
        return self.n

    def _check(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"record {i} out of range for the first {self.n} records")
        return i

    def tokens(self, i: int) -> np.ndarray:
        return self.split.tokens(self._check(i))

    def length(self, i: int) -> int:
        return self.split.length(self._check(i))

    def record_id(self, i: int) -> str:
        return self.split.record_id(self._check(i))

    def stream(self, start: int, stop: int) -> np.ndarray:
        if stop > self.num_tokens:
            raise IndexError(f"stream slice [{start}, {stop}) outside [0, {self.num_tokens}]")
        return self.split.stream(start, stop)


def first_records(source, n: int | None):
    """The first ``n`` records (all when None) of residue strings or of a prepared split."""
    if n is None:
        return source
    return FirstRecords(source, n) if _is_prepared(source) else list(source)[:n]


def _collator(task: str, tokenizer: ProteinTokenizer, mask_prob: float, generator: torch.Generator | None):
    if task == "mlm":
        return MaskedLMCollator(tokenizer, mask_prob, generator=generator)
    if task == "clm":
        return CausalLMCollator(tokenizer)
    raise ValueError(f"task must be 'mlm' or 'clm', got {task!r}")


def _is_prepared(source) -> bool:
    """Whether ``source`` is a split of a prepared dataset (it reads tokens) or residue strings."""
    return hasattr(source, "tokens") and hasattr(source, "stream")


def _dataset(source, tokenizer: ProteinTokenizer, max_length: int, *, concatenate: bool, random_crop: bool):
    """The items of ``source`` (residue strings, or a prepared split): proteins or windows."""
    if _is_prepared(source):
        if concatenate:
            return PreparedWindows(source, max_length)
        return PreparedSequences(source, max_length, random_crop=random_crop)
    if concatenate:
        return ConcatenatedWindows(source, tokenizer, max_length)
    return ProteinSequences(source, tokenizer, max_length, random_crop=random_crop)


class LanguageModelExamples:
    """Training examples for masked (``task="mlm"``) or causal (``"clm"``) language modelling.

    ``sequences`` are residue strings (held in memory) or a split of a prepared dataset
    (:class:`performers.proteins.prepared.PreparedDataset`, read from memory-mapped shards: the
    same examples, at any corpus size). One protein per example, randomly cropped to
    ``max_length`` tokens, or (``concatenate``) fixed windows of the proteins joined together.
    ``example(i, streams)`` crops with ``streams(0)`` and masks with ``streams(1)``, where
    ``streams(k)`` gives the example's own generators (see
    :class:`performers.training.RandomStreams`); ``collate`` pads examples into a batch. This is
    the data interface of :class:`performers.training.Trainer`.
    """

    def __init__(
        self,
        sequences,
        tokenizer: ProteinTokenizer,
        *,
        task: str,
        max_length: int,
        mask_prob: float = 0.15,
        concatenate: bool = False,
    ) -> None:
        _collator(task, tokenizer, mask_prob, None)  # validates task and mask_prob
        self.dataset = _dataset(sequences, tokenizer, max_length, concatenate=concatenate, random_crop=True)
        self.tokenizer, self.task, self.mask_prob = tokenizer, task, mask_prob

    def __len__(self) -> int:
        return len(self.dataset)

    def example(self, index: int, streams: Callable[[int], torch.Generator]) -> dict[str, Tensor]:
        """Example ``index``: ``input_ids``, ``attention_mask``, ``labels``, each ``(1, L)``."""
        item = self.dataset.get(index, streams(0))
        generator = streams(1) if self.task == "mlm" else None
        return _collator(self.task, self.tokenizer, self.mask_prob, generator)([item])

    @property
    def pad_id(self) -> int:
        """The token of padding (packed batches pad the tails of their rows with it)."""
        return self.tokenizer.pad_id

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad examples into one batch ``(B, max L)``."""
        return pad_batch(examples, self.tokenizer.pad_id)


def evaluation_batches(
    sequences,
    tokenizer: ProteinTokenizer,
    *,
    task: str,
    max_length: int,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    max_batches: int | None = None,
    concatenate: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """The fixed evaluation batches of ``sequences`` (residue strings or a prepared split):
    ``input_ids``, ``attention_mask``, ``labels``.

    Proteins are cropped at their start to ``max_length`` tokens (or, with ``concatenate``,
    joined and cut into windows of ``max_length``). MLM masks are drawn per protein (window)
    from a generator seeded by ``seed`` and the protein's own tokens (:func:`item_generator`):
    two evaluations of the same model see the same batches, and a protein gets the same masks
    whatever the batch size, the proteins beside it or how those are cropped.

    Raises:
        ValueError: the sequences give no example of ``max_length`` tokens.
    """
    if len(sequences) == 0:
        raise ValueError("no proteins to evaluate (an empty split?)")
    data = _dataset(sequences, tokenizer, max_length, concatenate=concatenate, random_crop=False)
    if len(data) == 0:
        raise ValueError(f"the evaluation sequences give no window of {max_length} tokens")
    collate = _collator(task, tokenizer, mask_prob, None)
    for b, start in enumerate(range(0, len(data), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        if task == "clm":  # nothing random
            yield collate(items)
            continue
        # One generator per item: a protein's masks never depend on its neighbours' lengths.
        parts = [
            MaskedLMCollator(tokenizer, mask_prob, generator=item_generator(seed, item))([item])
            for item in items
        ]
        yield pad_batch(parts, tokenizer.pad_id)


def item_generator(seed: int, item: Tensor | str) -> torch.Generator:
    """A generator seeded by ``seed`` and an item's content (token ids, or a residue string):
    the random choices made for one protein (its evaluation masks) depend on that protein
    alone — not on its position, its batch or the other proteins evaluated with it."""
    if isinstance(item, str):
        data = item.encode()
    else:
        data = np.ascontiguousarray(item.detach().cpu().numpy().astype(np.int64)).tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=int(seed).to_bytes(8, "little", signed=True))
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little"))
