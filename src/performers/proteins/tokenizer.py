"""Amino-acid tokenizer: 20 standard residues, the rare ones, and special tokens.

Ids: ``<pad>`` 0, ``<mask>`` 1, ``<cls>`` 2 (also the beginning-of-sequence token), ``<eos>``
3, ``<unk>`` 4, then the 20 standard residues in alphabetical one-letter order, then ``X B Z
U O``: 30 tokens. The vocabulary is saved with a model (``tokenizer.json``) so ids never drift.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from performers.proteins.fasta import RARE_RESIDUES, STANDARD_RESIDUES
from performers.utils import atomic_write
from performers.utils.errors import InputError

__all__ = ["SPECIAL_TOKENS", "ProteinTokenizer", "UnknownResidueError"]

SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<eos>", "<unk>")
UNKNOWN_MODES = ("unk", "error")


class UnknownResidueError(InputError):
    """A residue string holding a character the tokenizer has no token for (with
    ``unknown="error"``); the message names the character, its position and the sequence, which
    are also its attributes ``char``, ``position`` (0-based) and ``sequence``."""

    def __init__(self, message: str, *, char: str, position: int, sequence: str) -> None:
        super().__init__(message)
        self.char, self.position, self.sequence = char, position, sequence


class ProteinTokenizer:
    """Maps residues to ids and back.

    Args:
        residues: the residue letters, in id order after the special tokens.
        unknown: ``"unk"`` maps a letter outside the vocabulary to ``<unk>``; ``"error"``
            raises :class:`UnknownResidueError` (a ``ValueError``) naming it. ``encode`` and
            ``batch_encode`` can override it per call.
    """

    def __init__(self, residues: str = STANDARD_RESIDUES + RARE_RESIDUES, *, unknown: str = "unk") -> None:
        if len(set(residues)) != len(residues) or not residues.isalpha() or not residues.isupper():
            raise ValueError(f"residues must be distinct upper-case letters, got {residues!r}")
        _check_unknown(unknown)
        self.residues = residues
        self.unknown = unknown
        self.tokens = list(SPECIAL_TOKENS) + list(residues)
        self._ids = {token: i for i, token in enumerate(self.tokens)}

    pad_id = 0
    mask_id = 1
    cls_id = 2
    bos_id = 2
    eos_id = 3
    unk_id = 4

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(range(len(SPECIAL_TOKENS)))

    @property
    def residue_ids(self) -> range:
        """Ids of the residue tokens (what MLM may sample as random replacements)."""
        return range(len(SPECIAL_TOKENS), len(self.tokens))

    def encode(
        self, sequence: str, *, add_special_tokens: bool = True, unknown: str | None = None
    ) -> list[int]:
        """``"MKV"`` → ``[<cls>, M, K, V, <eos>]`` (upper-cases first).

        ``unknown`` overrides the tokenizer's policy for a character outside the vocabulary
        (``"unk"`` or ``"error"``: :class:`UnknownResidueError`).
        """
        unknown = self.unknown if unknown is None else _check_unknown(unknown)
        ids = []
        for position, char in enumerate(sequence):
            token = self._ids.get(char.upper())
            if token is None or token < len(SPECIAL_TOKENS):
                if unknown == "error":
                    raise UnknownResidueError(
                        f"unknown residue {char!r} at position {position} of the sequence "
                        f"{sequence!r} (0-based; residues are {self.residues})",
                        char=char,
                        position=position,
                        sequence=sequence,
                    )
                token = self.unk_id
            ids.append(token)
        if add_special_tokens:
            ids = [self.cls_id, *ids, self.eos_id]
        return ids

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special_tokens: bool = True) -> str:
        """Ids back to letters; special tokens are dropped (or written as ``<name>``)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} outside the vocabulary of {len(self.tokens)}")
            if i < len(SPECIAL_TOKENS):
                if not skip_special_tokens:
                    out.append(self.tokens[i])
                continue
            out.append(self.tokens[i])
        return "".join(out)

    def batch_encode(
        self,
        sequences: Sequence[str],
        *,
        add_special_tokens: bool = True,
        padding_side: str = "right",
        max_length: int | None = None,
        unknown: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encode and pad: ``(input_ids (B, L) int64, attention_mask (B, L) int64, 1 = token)``.

        ``max_length`` truncates (keeping the start); ``padding_side="left"`` suits generation;
        ``unknown`` as for :meth:`encode`.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        encoded = [self.encode(s, add_special_tokens=add_special_tokens, unknown=unknown) for s in sequences]
        if max_length is not None:
            encoded = [e[:max_length] for e in encoded]
        length = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            span = slice(0, len(e)) if padding_side == "right" else slice(length - len(e), length)
            ids[row, span] = torch.tensor(e, dtype=torch.long)
            mask[row, span] = 1
        return ids, mask

    def to_dict(self) -> dict:
        return {"type": "ProteinTokenizer", "tokens": self.tokens, "unknown": self.unknown}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` (atomically: temporary file, then rename)."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProteinTokenizer:
        """Read a tokenizer saved by :meth:`save`; a file that does not describe one is a
        ``ValueError`` naming it (a missing file: ``FileNotFoundError``)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a valid tokenizer file ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: not a ProteinTokenizer file (a JSON {type(data).__name__}, not an object)"
            )
        tokens = data.get("tokens")
        if data.get("type") != "ProteinTokenizer" or not isinstance(tokens, list):
            raise ValueError(f"{path}: not a ProteinTokenizer file (missing 'type' or 'tokens')")
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"{path}: special tokens must come first as {SPECIAL_TOKENS}, got {tokens[:5]}")
        return cls("".join(tokens[len(SPECIAL_TOKENS) :]), unknown=data.get("unknown", "unk"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProteinTokenizer) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ProteinTokenizer(vocab_size={len(self)}, residues={self.residues!r})"


def _check_unknown(unknown: str) -> str:
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"unknown must be 'unk' or 'error', got {unknown!r}")
    return unknown
