"""Protein embeddings from a trained model, in the conventions of ESM's ``esm-extract``.

:func:`extract_representations` runs the model over proteins batched by a *token budget*:
with this package's models, packed (:mod:`performers.jobs.packing`: proteins end to end in one
row of at most ``max_tokens`` real tokens, no padding computed); otherwise (``pack=False``, or
a Hugging Face model) padded — proteins sorted by length (longest first), each batch filled
while ``rows × longest`` — padded tokens included — stays within ``max_tokens``. Proteins are cropped
by the one rule of :mod:`performers.jobs.cropping` (only when asked — ``truncation_length``,
``max_length`` — or beyond a model's learned positions; counted in the result's ``.crop``).
Each protein is encoded as ``[<cls>, residues..., <eos>]``;
it returns, for each requested layer, any of

* ``"mean"``: the mean over the residues only (``<cls>``, ``<eos>`` and padding never enter it;
  for a model whose tokens span several residues, ProtGPT2's, the mean over its tokens),
* ``"per_tok"``: one row per residue ``(L, E)`` (again without ``<cls>``/``<eos>``; refused for
  multi-residue tokens),
* ``"bos"``: the ``<cls>`` vector.

Layers: ``0`` is the embedding output, ``1 .. num_layers`` the outputs of the blocks; the last
one, ``num_layers``, is taken after the final LayerNorm — it is what the language-model head
reads — while ``1 .. num_layers - 1`` are the un-normalized residual stream
(:class:`performers.models.PerformerModelOutput`). Negative indices count from the end
(``-1`` is ``num_layers``), as in ``esm-extract``. A causal model is run causally (each residue
sees its prefix only), a masked one bidirectionally. A protein embedded alone gets the same
vectors as in a padded batch (padding is masked out of attention) or a packed row (attention
stops at each protein's boundaries, positions restart), up to float rounding.

Proteins come as FASTA records, ``(id, sequence)`` pairs, a ``{id: sequence}`` dict or plain
strings (ids ``seq1``, ``seq2``, ...): :func:`protein_pairs`, shared with the scoring jobs.
:func:`embed_proteins` returns an :class:`Embeddings` dict, also ``(ids, array)`` or a pandas
table. ``device=`` moves the model first (:func:`place_model`); results come back on the CPU.

The model comes in through :class:`performers.jobs.protein_lm.ProteinLM` (this package's
models are wrapped by :func:`~performers.jobs.protein_lm.as_protein_lm`).
:func:`embed_proteins` is the one-layer, one-kind form. The helpers here
(:func:`protein_pairs`, :func:`crop_proteins`, :func:`token_batches`, :class:`Progress`) are
shared with :mod:`performers.jobs.scoring`.
"""

from __future__ import annotations

import reprlib
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from performers.jobs.cropping import ReportedDict, crop_to_rule, model_residue_limit
from performers.jobs.packing import encode_packed, packed_batches, packed_hidden_states, resolve_pack
from performers.jobs.protein_lm import ProteinLM, ProteinVocabulary, as_protein_lm
from performers.models import PerformerForCausalLM, PerformerForMaskedLM, PerformerModel
from performers.proteins import FastaRecord, ProteinTokenizer
from performers.utils import atomic_write
from performers.utils.validation import is_int

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "INCLUDES",
    "PROTEIN_INPUTS",
    "SPECIAL_TOKENS_PER_PROTEIN",
    "Embeddings",
    "Progress",
    "ProteinRecords",
    "crop_proteins",
    "embed_proteins",
    "encoder_of",
    "extract_representations",
    "pad_encoded",
    "place_model",
    "protein_pairs",
    "residue_limit",
    "resolve_layers",
    "token_batches",
    "truncate_proteins",
    "write_embeddings",
]

DEFAULT_MAX_TOKENS = 16384
# <cls> and <eos> around the residues of every protein.
SPECIAL_TOKENS_PER_PROTEIN = 2

# What esm-extract's --include takes (besides contacts, which need attention maps FAVOR+ never forms).
INCLUDES = ("mean", "per_tok", "bos")

# What the embedding and scoring functions take as proteins (protein_pairs).
ProteinRecords = Iterable[FastaRecord | tuple[str, str] | str] | Mapping[str, str] | str
PROTEIN_INPUTS = (
    "FASTA records (read_fasta), (id, sequence) pairs, a {id: sequence} dict, or sequence strings"
)


def _describe(value: object) -> str:
    """``int 5``: a value's type and a short repr, for messages about what was given."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _pair(record: object, index: int) -> tuple[str, str]:
    """``(id, sequence)`` of one item of the proteins given (``index`` counts from 0)."""
    if isinstance(record, FastaRecord):
        return record.id, record.sequence
    if isinstance(record, str):
        return f"seq{index + 1}", record  # a plain sequence: its id is its position
    if isinstance(record, tuple | list) and len(record) == 2 and all(isinstance(x, str) for x in record):
        return record[0], record[1]
    raise TypeError(f"proteins must be {PROTEIN_INPUTS}; item {index + 1} is {_describe(record)}")


def protein_pairs(records: ProteinRecords) -> list[tuple[str, str]]:
    """``(id, sequence)`` of each protein given, in order. ``records`` may be

    * :class:`FastaRecord` objects (as :func:`~performers.proteins.read_fasta` yields): the id is
      the first word of the header;
    * ``(id, sequence)`` pairs;
    * a ``{id: sequence}`` dict (in its order);
    * sequence strings, or one string: ids ``seq1``, ``seq2``, ... by position (a mix of forms
      in one list is fine; generated ids count every item).

    Raises:
        TypeError: anything else (a number, bytes, a dict of non-strings, a tuple of three...),
            naming the accepted forms and what was given.
        ValueError: an id that appears twice (ids key the outputs), or an empty sequence.
    """
    if isinstance(records, str):
        records = [records]
    elif isinstance(records, Mapping):
        records = list(records.items())
    elif isinstance(records, bytes | bytearray) or not isinstance(records, Iterable):
        raise TypeError(f"proteins must be {PROTEIN_INPUTS}; got {_describe(records)}")
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        name, sequence = _pair(record, index)
        if name in seen:
            raise ValueError(
                f"protein id {name!r} appears twice (records {seen[name] + 1} and {index + 1}); "
                "ids must be unique because they key the output"
            )
        if not sequence:
            raise ValueError(f"protein {name!r} has no residues")
        seen[name] = index
        pairs.append((name, sequence))
    return pairs


def place_model(model: nn.Module | ProteinLM, device: str | torch.device | None) -> None:
    """Move ``model`` (one of this package's models, or a ProteinLM's ``model``) to ``device``,
    in place; the jobs then put their inputs where it is. None: leave it where it is.

    Raises:
        TypeError: a ProteinLM without a ``model`` module to move (move it yourself, device=None).
    """
    if device is None:
        return
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"device: cannot move a {type(model).__name__} (it has no .model module); move it "
            "yourself and leave device=None"
        )
    module.to(device)


def residue_limit(model: nn.Module) -> int | None:
    """Most residues one protein may have in ``model`` (None: no limit, rotary positions).

    Learned positions stop at ``max_position_embeddings``, two of which ``<cls>`` and ``<eos>``
    take (:func:`performers.jobs.cropping.model_residue_limit`).
    """
    return model_residue_limit(model)


def crop_proteins(
    pairs: Sequence[tuple[str, str]], model: nn.Module, max_length: int | None
) -> tuple[list[tuple[str, str]], int]:
    """The proteins as the cropping rule (:mod:`performers.jobs.cropping`) has ``model`` read
    them: cropped to ``max_length`` tokens (``<cls>`` and ``<eos>`` included: the first
    ``max_length - 2`` residues are kept) when given, else to the model's learned positions.

    Returns:
        ``(pairs, cropped)``: the (possibly cropped) proteins and how many were cropped (the
        whole report: :func:`~performers.jobs.cropping.crop_to_rule`).

    Raises:
        ValueError: ``max_length`` below 3 or beyond the learned positions.
    """
    pairs, report = crop_to_rule(pairs, residue_limit(model), max_length=max_length)
    return pairs, len(report.cropped)


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices of ``lengths`` (tokens per item) into batches of at most ``max_tokens``
    padded tokens (``rows × longest``), longest items first.

    Items are sorted by length (descending, ties in input order) so that each batch holds
    similar lengths and little padding. An item longer than ``max_tokens`` gets a batch of its
    own (nothing is split). Every index appears in exactly one batch.
    """
    if not is_int(max_tokens) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    longest = 0
    for index in order:
        # Sorted descending: the first item of a batch is its longest.
        if batches and (len(batches[-1]) + 1) * longest <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
            longest = lengths[index]
    return batches


def encoder_of(model: nn.Module) -> tuple[PerformerModel, bool]:
    """``(encoder, is_causal)`` of a :class:`PerformerForMaskedLM` (bidirectional),
    :class:`PerformerForCausalLM` (causal) or bare :class:`PerformerModel`."""
    if isinstance(model, PerformerForCausalLM):
        return model.model, True
    if isinstance(model, PerformerForMaskedLM):
        return model.model, False
    if isinstance(model, PerformerModel):
        return model, False
    raise TypeError(
        "model must be a PerformerForMaskedLM, PerformerForCausalLM or PerformerModel, "
        f"got {type(model).__name__}"
    )


class Progress:
    """A tqdm bar on a terminal; on anything else (files, CI) a line on stderr every
    ``log_every`` seconds and at the end, as the trainer does."""

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, log_every: float = 10.0):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.log_every = enabled, log_every
        self.count = 0
        self.start = self.last_log = time.perf_counter()
        live = enabled and sys.stderr.isatty()
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, disable=not live
        )

    def update(self, n: int) -> None:
        self.count += n
        self.bar.update(n)
        now = time.perf_counter()
        if (
            self.enabled
            and self.bar.disable
            and (now - self.last_log >= self.log_every or self.count >= self.total)
        ):
            self.last_log = now
            rate = self.count / max(now - self.start, 1e-9)
            print(
                f"{self.desc}: {self.count}/{self.total} {self.unit} ({rate:.0f} {self.unit}/s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


def truncate_proteins(
    pairs: Sequence[tuple[str, str]], limit: int | None, truncation_length: int | None
) -> tuple[list[tuple[str, str]], int]:
    """Keep the first ``truncation_length`` residues of each protein (ESM's
    ``truncation_seq_length``), or, without it, the first ``limit`` (the model's learned
    positions, in residues; None: no limit) — the cropping rule of
    :mod:`performers.jobs.cropping` in residues.

    Returns:
        ``(pairs, truncated)``: the (possibly shortened) proteins and how many were shortened.

    Raises:
        ValueError: ``truncation_length`` below 1 or beyond ``limit``.
    """
    pairs, report = crop_to_rule(pairs, limit, truncation_length=truncation_length)
    return pairs, len(report.cropped)


def resolve_layers(repr_layers: Sequence[int], num_layers: int) -> list[int]:
    """Layer indices as ``0 .. num_layers``: a negative index counts from the end (``-1`` is
    ``num_layers``, ``-(num_layers + 1)`` is 0), as in ``esm-extract``. Repeats are dropped,
    the order kept.

    Raises:
        ValueError: an index outside ``-(num_layers + 1) .. num_layers`` or not an int, or none.
    """
    if isinstance(repr_layers, int) or not repr_layers:
        raise ValueError(f"repr_layers must be a non-empty sequence of ints, got {repr_layers!r}")
    layers: list[int] = []
    for layer in repr_layers:
        if not is_int(layer) or not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"layer must be an int in {-(num_layers + 1)}..{num_layers} (0 = embeddings, "
                f"negative counts from the end; the model has {num_layers} layers), got {layer!r}"
            )
        resolved = layer % (num_layers + 1)
        if resolved not in layers:
            layers.append(resolved)
    return layers


def pad_encoded(tokenizer: ProteinVocabulary, sequences: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``[<cls>, residues..., <eos>]`` of each sequence, padded on the right with ``<pad>``:
    ``(input_ids (B, L), attention_mask (B, L))``, int64, mask 1 = token."""
    encoded = [tokenizer.encode(sequence) for sequence in sequences]
    length = max(map(len, encoded))
    ids = torch.full((len(encoded), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def _check_include(include: Sequence[str]) -> list[str]:
    if isinstance(include, str) or not include or any(kind not in INCLUDES for kind in include):
        raise ValueError(f"include must be a non-empty sequence of {', '.join(INCLUDES)}, got {include!r}")
    return list(dict.fromkeys(include))


def extract_representations(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    records: ProteinRecords,
    *,
    repr_layers: Sequence[int] = (-1,),
    include: Sequence[str] = ("mean",),
    max_tokens: int = DEFAULT_MAX_TOKENS,
    truncation_length: int | None = None,
    max_length: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    pack: bool | None = None,
) -> dict[str, dict[str, dict[int, Tensor]]]:
    """Representations of proteins as ``esm-extract`` gives them (see the module docstring).

    Args:
        model: a :class:`~performers.jobs.protein_lm.ProteinLM`, or this package's
            :class:`PerformerForMaskedLM`, :class:`PerformerForCausalLM` or
            :class:`PerformerModel` (run in eval mode without autograd; its mode is restored).
        tokenizer: the model's tokenizer (ignored for a ProteinLM, which has its own).
        records: the proteins: FASTA records, ``(id, sequence)`` pairs, a ``{id: sequence}``
            dict or sequence strings (ids ``seq1``, ``seq2``, ...; :func:`protein_pairs`); ids
            must be unique.
        repr_layers: layers, ``0`` (embeddings) .. ``num_layers``; negative ones count from the end.
        include: any of ``"mean"``, ``"per_tok"``, ``"bos"``.
        max_tokens: tokens per forward pass — padded ones, or real ones when packed (a
            longer protein runs alone).
        truncation_length: keep each protein's first this many residues (ESM's
            ``truncation_seq_length``); or
        max_length: the same in tokens, ``<cls>`` and ``<eos>`` included (``max_length - 2``
            residues). Neither: whole proteins, but at most the model's learned positions
            (:mod:`performers.jobs.cropping`).
        progress: a progress bar over residues (stderr).
        device: move the model there first (in place, :func:`place_model`); None: run it
            where it is.
        pack: lay the proteins end to end in rows of at most ``max_tokens`` real tokens
            (:mod:`performers.jobs.packing`; the same vectors up to float rounding, no padding
            computed); None: pack when the model takes packed input (this package's models,
            not a Hugging Face one); False: the padded batches.

    Returns:
        ``{id: {kind: {layer: tensor}}}`` in input order, ``layer`` resolved to ``0 ..
        num_layers``; tensors on the CPU in the model's dtype: ``(E,)`` for ``mean`` and ``bos``,
        ``(L, E)`` for ``per_tok``. Its ``.crop`` (:class:`~performers.jobs.cropping.CropReport`)
        says which proteins were cropped, and to how many residues.

    Raises:
        TypeError: proteins in none of the accepted forms (:func:`protein_pairs`).
        ValueError: a repeated id, an empty sequence, a bad layer / ``include`` /
            ``max_tokens`` / ``truncation_length`` / ``max_length`` (or both), a crop longer
            than the learned positions.
        PackingError: ``pack=True`` for a model that does not take packed input.
    """
    place_model(model, device)
    lm = as_protein_lm(model, tokenizer)
    layers = resolve_layers(repr_layers, lm.num_layers)
    kinds = _check_include(include)
    if "per_tok" in kinds and not getattr(lm, "one_token_per_residue", True):
        raise ValueError(
            "include 'per_tok' needs one token per residue, but this model's tokens span several "
            "residues (byte-pair tokens, as ProtGPT2's); ask for 'mean' (over its tokens) or 'bos'"
        )
    pairs, crop = crop_to_rule(
        protein_pairs(records), lm.residue_limit, max_length=max_length, truncation_length=truncation_length
    )
    packed = resolve_pack(pack, lm)
    lengths = [len(sequence) + SPECIAL_TOKENS_PER_PROTEIN for _, sequence in pairs]
    batches = packed_batches(lengths, max_tokens) if packed else token_batches(lengths, max_tokens)
    device = lm.device
    results: list[dict[str, dict[int, Tensor]]] = [{kind: {} for kind in kinds} for _ in pairs]
    bar = Progress(sum(len(s) for _, s in pairs), desc="embed", unit="residues", enabled=progress)
    try:
        for batch in batches:
            sequences = [pairs[i][1] for i in batch]
            if packed:
                # One row, the proteins end to end: protein k's tokens start at cu_seqlens[k].
                ids, cu_seqlens = encode_packed(lm.tokenizer, sequences)
                hidden_states = packed_hidden_states(lm, ids.to(device), cu_seqlens.to(device))
                spans = [(0, int(cu_seqlens[k]), int(cu_seqlens[k + 1])) for k in range(len(batch))]
            else:
                ids, mask = pad_encoded(lm.tokenizer, sequences)
                hidden_states = lm.hidden_states(ids.to(device), mask.to(device))
                spans = [(row, 0, int(mask[row].sum())) for row in range(len(batch))]
            for layer in layers:
                hidden = hidden_states[layer]
                for (row, start, end), index in zip(spans, batch, strict=True):
                    # The protein's tokens sit after <cls>, before <eos> (and any padding): one
                    # per residue, or fewer when a token spans several residues.
                    residues = hidden[row, start + 1 : end - 1]
                    out = results[index]
                    # clone: a view would keep the whole batch's hidden states alive.
                    if "mean" in out:
                        out["mean"][layer] = residues.mean(dim=0).cpu()
                    if "per_tok" in out:
                        out["per_tok"][layer] = residues.clone().cpu()
                    if "bos" in out:
                        out["bos"][layer] = hidden[row, start].clone().cpu()
            bar.update(sum(len(pairs[i][1]) for i in batch))
    finally:
        bar.close()
    out = ReportedDict((name, result) for (name, _), result in zip(pairs, results, strict=True))
    out.crop = crop
    return out


def embed_proteins(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
    records: ProteinRecords,
    *,
    per_residue: bool = False,
    layer: int | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_length: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    pack: bool | None = None,
) -> Embeddings:
    """Embeddings of proteins from one layer, keyed by id, in input order
    (:func:`extract_representations` of one layer and one kind), as an :class:`Embeddings`
    dict: ``.as_arrays()`` gives ``(ids, numpy array)``, ``.as_dataframe()`` a pandas table.

    Args:
        model: a :class:`PerformerForMaskedLM`, :class:`PerformerForCausalLM` or
            :class:`PerformerModel` (run in eval mode without autograd; its mode is restored).
        tokenizer: the model's :class:`ProteinTokenizer`.
        records: the proteins: FASTA records, ``(id, sequence)`` pairs, a ``{id: sequence}``
            dict or sequence strings (ids ``seq1``, ``seq2``, ...; :func:`protein_pairs`); ids
            must be unique.
        per_residue: return ``(L, E)`` per protein (one row per residue, specials excluded)
            instead of the mean over residues ``(E,)``.
        layer: ``0`` (embeddings) .. ``num_layers`` (default: the last, after the final
            LayerNorm); see the module docstring.
        max_tokens: padded tokens per forward pass (a longer protein runs alone).
        max_length: crop each protein to this many tokens including ``<cls>`` and ``<eos>``
            (its first ``max_length - 2`` residues); default: whole proteins, but at most the
            model's learned positions (:mod:`performers.jobs.cropping`).
        progress: a progress bar over residues (stderr).
        device: move the model there first (in place); None: run it where it is.
        pack: proteins end to end in rows of ``max_tokens`` real tokens (None: yes, this
            package's models all take packed input; False: padded batches); see
            :func:`extract_representations`.

    Returns:
        ``{id: (E,) or (L, E)}`` on the CPU, in the model's dtype (an :class:`Embeddings`);
        its ``.crop`` says which proteins were cropped.

    Raises:
        TypeError: proteins in none of the accepted forms (:func:`protein_pairs`).
        ValueError: a repeated id, an empty sequence, a bad ``layer`` / ``max_tokens`` /
            ``max_length``, a ``max_length`` beyond the learned positions.
    """
    place_model(model, device)
    encoder, _ = encoder_of(model)
    num_layers = encoder.config.num_layers
    if layer is None:
        layer = num_layers
    if not is_int(layer) or not 0 <= layer <= num_layers:
        raise ValueError(f"layer must be an int in 0..{num_layers} (0 = embeddings), got {layer!r}")
    kind = "per_tok" if per_residue else "mean"
    out = extract_representations(
        model,
        tokenizer,
        records,
        repr_layers=[layer],
        include=[kind],
        max_tokens=max_tokens,
        max_length=max_length,
        progress=progress,
        pack=pack,
    )
    embeddings = Embeddings((name, result[kind][layer]) for name, result in out.items())
    embeddings.crop = out.crop
    return embeddings


class Embeddings(ReportedDict):
    """``{id: tensor}`` in input order (a plain ``dict`` otherwise, with ``.crop``: which proteins
    were cropped), as :func:`embed_proteins` returns it, with two other views of the same vectors."""

    def as_arrays(self) -> tuple[list[str], np.ndarray]:
        """``(ids, array)``: the ids in order and the ``(N, E)`` numpy array of their vectors
        (row ``i`` is ``ids[i]``'s; float32 for a bfloat16 model, numpy having no bfloat16).

        Raises:
            ValueError: per-residue embeddings (one ``(L, E)`` per protein, of different
                lengths): take each ``embeddings[id].numpy()`` instead.
        """
        tensors = [tensor.detach().cpu() for tensor in self.values()]
        if any(tensor.dim() != 1 for tensor in tensors):
            raise ValueError(
                "as_arrays() stacks one vector per protein; these are per-residue embeddings "
                "(L, E) of different lengths: take embeddings[id].numpy() for each"
            )
        if not tensors:
            return [], np.zeros((0, 0), dtype=np.float32)
        stacked = torch.stack(tensors)
        if stacked.dtype == torch.bfloat16:
            stacked = stacked.float()
        return list(self), stacked.numpy()

    def as_dataframe(self):
        """A pandas ``DataFrame``: one row per protein (index ``id``, in order), one column per
        dimension ``0 .. E-1`` (:meth:`as_arrays`' array).

        Raises:
            ImportError: pandas is not installed (:meth:`as_arrays` needs only numpy).
            ValueError: per-residue embeddings, as :meth:`as_arrays`.
        """
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "as_dataframe() needs pandas (pip install pandas); as_arrays() gives (ids, numpy "
                "array) without it"
            ) from None
        ids, array = self.as_arrays()
        return pandas.DataFrame(array, index=pandas.Index(ids, name="id"))


def write_embeddings(
    embeddings: dict[str, Tensor], path: str | Path, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``{id: tensor}`` to ``path`` atomically, in the format of its suffix.

    * ``.npz``: one array per id (``numpy.load(path)[id]``); bfloat16 is stored as float32
      (numpy has no bfloat16).
    * ``.safetensors``: one tensor per id, ``metadata`` (strings) in the header.

    Returns the path. Raises ``ValueError`` for another suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors"):
        raise ValueError(
            f"{path}: the output must end in .npz or .safetensors, got {path.suffix or 'no suffix'!r}"
        )
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in embeddings.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path

    def write_npz(tmp: Path) -> None:
        # numpy.savez itself would take an id such as "file" or "allow_pickle" for its own
        # keyword argument; writing the zip directly keeps every id a plain key.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, tensor in tensors.items():
                if tensor.dtype == torch.bfloat16:
                    tensor = tensor.float()
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, tensor.numpy(), allow_pickle=False)

    atomic_write(path, write_npz)
    return path
