"""Does loading ever stall a training step? The trainer's batch loader against the model it feeds.

For each setting — the demo (masked LM, proteins cropped to 256 tokens, batch 16, the demo's
small model) and the paper's long-sequence one (masked LM on windows of 8192 tokens of the
concatenated proteins, batch 1, d_model 512, 8 heads, 2 layers, d_ff 2048, M = 256) — this
measures, on a prepared copy of the shipped corpus:

* the loader alone: training batches per second from
  :func:`performers.training.loader.batch_loader` in the measuring process (``num_workers=0``,
  so nothing overlaps: the worst case), in tokens per second;
* the model: tokens per second of full training steps (forward, backward, AdamW) of a
  :class:`~performers.training.Trainer`'s model on batches made beforehand.

The ratio is how many times faster batches are made than consumed (target ≥ 10). Time the two
alone on a quiet machine.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from performers.bench.results import write_results
from performers.layers import FavorConfig
from performers.models import PerformerConfig, build_model
from performers.proteins import (
    LanguageModelExamples,
    PreparedDataset,
    ProteinTokenizer,
    default_corpus,
    prepare,
)
from performers.training import build_optimizer
from performers.training.loader import batch_loader

__all__ = ["SETTINGS", "LoaderSetting", "measure_setting", "run_loader_bench"]


@dataclass(frozen=True)
class LoaderSetting:
    name: str
    max_length: int
    batch_size: int
    concatenate: bool
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    num_features: int


SETTINGS = (
    LoaderSetting("demo (L = 256, batch 16)", 256, 16, False, 128, 2, 4, 256, 64),
    LoaderSetting("long (L = 8192 windows, batch 1)", 8192, 1, True, 512, 2, 8, 2048, 256),
)


def _tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def measure_setting(
    setting: LoaderSetting,
    data: str | Path,
    *,
    loader_batches: int = 200,
    model_steps: int = 5,
    seed: int = 0,
) -> dict:
    """Loader and model tokens/s of one setting on the prepared dataset ``data`` (train split)."""
    tokenizer = ProteinTokenizer()
    examples = LanguageModelExamples(
        PreparedDataset(data, "train"),
        tokenizer,
        task="mlm",
        max_length=setting.max_length,
        concatenate=setting.concatenate,
    )
    loader = batch_loader(examples, batch_size=setting.batch_size, seed=seed)
    next(loader)  # first batch: opens the memory maps
    start, tokens = time.perf_counter(), 0
    for _ in range(loader_batches):
        tokens += _tokens(next(loader))
    loader_seconds = time.perf_counter() - start
    batches = [next(loader) for _ in range(model_steps + 1)]

    torch.manual_seed(seed)
    config = PerformerConfig(
        vocab_size=len(tokenizer), d_model=setting.d_model, num_layers=setting.num_layers,
        num_heads=setting.num_heads, d_ff=setting.d_ff, max_position_embeddings=setting.max_length,
        pad_token_id=tokenizer.pad_id, favor=FavorConfig(setting.num_features),
    )  # fmt: skip
    model = build_model(config, "mlm").train()
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.1)

    def step(batch: dict) -> None:
        loss = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    start, model_tokens = time.perf_counter(), 0
    for batch in batches[1:]:
        step(batch)
        model_tokens += _tokens(batch)
    model_seconds = time.perf_counter() - start
    loader_rate, model_rate = tokens / loader_seconds, model_tokens / model_seconds
    return {
        "setting": asdict(setting),
        "loader_batches": loader_batches,
        "loader_tokens_per_second": loader_rate,
        "model_steps": model_steps,
        "model_seconds_per_step": model_seconds / model_steps,
        "model_tokens_per_second": model_rate,
        "ratio": loader_rate / model_rate,
    }


def run_loader_bench(
    data: str | Path | None, out: str | Path, *, command: str, threads: int, **options
) -> list[dict]:
    """Measure every :data:`SETTINGS` entry on the prepared dataset ``data`` (None: the shipped
    corpus, prepared in a temporary directory); write ``out`` (JSON) and a markdown table next to
    it."""
    if data is None:
        with tempfile.TemporaryDirectory(prefix="performers-loader-") as scratch:
            prepare([default_corpus()], f"{scratch}/refseq", log=None)
            return run_loader_bench(f"{scratch}/refseq", out, command=command, threads=threads, **options)
    torch.set_num_threads(threads)
    rows = [measure_setting(s, data, **options) for s in SETTINGS]
    payload = {
        "command": command,
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "data": str(data),
        "rows": rows,
    }
    lines = [
        "# The batch loader against the model it feeds",
        "",
        f"Command: `{command}` ({threads} torch thread(s), torch {torch.__version__}). Loader: batches of "
        "`performers.training.loader.batch_loader` made in the measuring process (no worker: the worst "
        "case) from a prepared copy of the shipped corpus; model: training steps (forward, backward, "
        "AdamW) of a masked LM of the given size on batches made beforehand.",
        "",
        "| setting | model | loader tokens/s | model tokens/s (s/step) | loader / model |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        s = row["setting"]
        lines.append(
            f"| {s['name']} | d_model {s['d_model']}, {s['num_layers']} layers, M = {s['num_features']} "
            f"| {row['loader_tokens_per_second']:,.0f} | {row['model_tokens_per_second']:,.0f} "
            f"({row['model_seconds_per_step']:.3f}) | {row['ratio']:,.0f}× |"
        )
    worst = min(r["ratio"] for r in rows)
    lines += ["", f"Smallest ratio: {worst:,.0f}× (target ≥ 10×): {'met' if worst >= 10 else 'NOT met'}."]
    write_results(out, payload, "\n".join(lines) + "\n")
    return rows
