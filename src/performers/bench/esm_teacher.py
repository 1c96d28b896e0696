"""A protein masked language model in Hugging Face's ESM architecture, trained here from scratch
with exact (softmax) attention: the stand-in for a downloaded ESM-2 in the fidelity benchmark
(:mod:`performers.bench.esm_fidelity`), whose conversion to FAVOR+ and distillation are measured
against it.

The model is ``EsmForMaskedLM(EsmConfig(...))`` shaped like ESM-2 at a small size: ESM's
33-token vocabulary (``EsmTokenizer``, written with the model), rotary positions, no dropout,
no LayerNorm before the first block, a final LayerNorm and token dropout (ESM-2's settings). It
learns masked LM as ESM did: 15 % of the residues of each crop are selected, of which 80 %
become ``<mask>``, 10 % a random standard residue and 10 % stay; the loss is the cross-entropy
at the selected positions. Batches are random crops of the training proteins
(:class:`~performers.integrations.distill.ProteinBatches`: batch ``i`` is a pure function of
``(seed, i)``); AdamW with decay on matrices (:func:`~performers.training.build_optimizer`),
linear warm-up then cosine decay (:func:`~performers.training.make_scheduler`), gradients
clipped at norm 1. The weight initialisation is seeded too, so a run is reproducible on one
machine (not resumable: the benchmark's default run is estimated at half an hour on 2 cores).

:func:`train_esm_teacher` saves the model and its tokenizer with ``save_pretrained`` (every
protein command loads the directory) and ``training.json`` (settings, loss curve, seconds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from performers.integrations.distill import ProteinBatches
from performers.training import build_optimizer, make_scheduler
from performers.utils import IGNORE_INDEX

__all__ = [
    "ESM_VOCAB",
    "EsmTeacherConfig",
    "esm_config",
    "esm_tokenizer",
    "mask_for_mlm",
    "train_esm_teacher",
]

# ESM-2's vocabulary, in its order (ids 0..32): <cls>=0, <pad>=1, <eos>=2, <unk>=3, residues
# L..C = 4..23, rare residues and gap symbols, <mask>=32.
ESM_VOCAB = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()
)
_STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@dataclass(frozen=True)
class EsmTeacherConfig:
    """Shape and training of the teacher (module docstring); a value out of range is a
    ``ValueError`` whose message starts with the field's name.

    Attributes:
        layers, width, heads: transformer blocks, hidden size and attention heads (the
            feed-forward width is ``4 × width``, as ESM-2's).
        steps, batch_size, max_length: optimizer steps, crops per step, tokens per crop
            (``<cls>`` and ``<eos>`` included).
        learning_rate, warmup_steps, weight_decay: AdamW's peak rate, linear warm-up steps,
            decay of the matrices.
        mask_prob: share of residues selected for masked LM.
        seed: weights, batches and masking.
        log_every: steps between logged losses.
    """

    layers: int = 4
    width: int = 128
    heads: int = 4
    steps: int = 1000
    batch_size: int = 32
    max_length: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("layers", "width", "heads", "steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if (self.width // self.heads) % 2:  # rotary rotates pairs of channels
            raise ValueError(f"width / heads must be even (rotary positions), got {self.width // self.heads}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (<cls>, a residue, <eos>), got {self.max_length}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def esm_tokenizer(directory: str | Path) -> Any:
    """ESM-2's ``EsmTokenizer`` from a ``vocab.txt`` of its 33 tokens, written into ``directory``."""
    from transformers import EsmTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    return EsmTokenizer(str(directory / "vocab.txt"))


def esm_config(config: EsmTeacherConfig) -> Any:
    """The ``EsmConfig`` of the teacher: ESM-2's settings at ``config``'s shape."""
    from transformers import EsmConfig

    return EsmConfig(
        vocab_size=len(ESM_VOCAB),
        hidden_size=config.width,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.width,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=config.max_length,  # unused by rotary positions
        position_embedding_type="rotary",
        layer_norm_eps=1e-5,
        emb_layer_norm_before=False,
        token_dropout=True,
        pad_token_id=ESM_VOCAB.index("<pad>"),
        mask_token_id=ESM_VOCAB.index("<mask>"),
    )


def mask_for_mlm(
    batch: dict[str, Tensor], tokenizer: Any, mask_prob: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """``batch`` corrupted for masked LM (ESM's 80/10/10 rule, module docstring) with ``labels``:
    the original id at selected positions, -100 elsewhere. Special tokens and padding are never
    selected."""
    ids = batch["input_ids"]
    special = torch.tensor(tokenizer.all_special_ids)
    residue = (batch["attention_mask"] == 1) & ~torch.isin(ids, special)
    selected = residue & (torch.rand(ids.shape, generator=generator) < mask_prob)
    action = torch.rand(ids.shape, generator=generator)  # independent of the selection
    standard = torch.tensor(tokenizer.convert_tokens_to_ids(list(_STANDARD_RESIDUES)))
    random_ids = standard[torch.randint(len(standard), ids.shape, generator=generator)]
    corrupted = torch.where(selected & (action < 0.8), tokenizer.mask_token_id, ids)
    corrupted = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
    labels = torch.where(selected, ids, IGNORE_INDEX)
    return {**batch, "input_ids": corrupted, "labels": labels}


def train_esm_teacher(
    sequences: Sequence[str],
    out_dir: str | Path,
    config: EsmTeacherConfig,
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the teacher on ``sequences`` (residue strings) and save it in ``out_dir``
    (module docstring); returns the ``training.json`` record: ``config``, ``parameters``,
    ``losses`` (``[step, loss]`` every ``log_every`` steps and at the last), ``seconds``."""
    from transformers import EsmForMaskedLM

    out_dir = Path(out_dir)
    tokenizer = esm_tokenizer(out_dir)
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG left as it was
        torch.manual_seed(config.seed)
        model = EsmForMaskedLM(esm_config(config))
    model.train()
    batches = ProteinBatches(sequences, tokenizer, config.batch_size, config.max_length, seed=config.seed)
    optimizer = build_optimizer(model, learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, warmup_steps=config.warmup_steps, total_steps=config.steps)
    losses: list[list[float]] = []
    start = time.perf_counter()
    for step in range(config.steps):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 1)
        loss = model(**mask_for_mlm(batches(step), tokenizer, config.mask_prob, generator)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            losses.append([step + 1, loss.item()])
            log(f"teacher step {step + 1}/{config.steps}: loss {losses[-1][1]:.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_proteins": len(batches.sequences),
        "losses": losses,
        "seconds": seconds,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
