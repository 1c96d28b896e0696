"""``performers bench text``: the character-level LM on Tiny Shakespeare at several contexts —
bits/char, tokens/s and a sample per model. Writes ``text.md``/``.json`` and curves per context
into ``out_dir``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from performers.bench.attention_sweep import BASELINE_VARIANTS, compare_attention
from performers.bench.paper import optimization_options, setting, task_section, write_report
from performers.bench.paper_tasks import ModelSize, TaskSpec
from performers.models import from_pretrained
from performers.text import CharVocabulary, load_tiny_shakespeare
from performers.training import TrainingConfig

__all__ = ["sample_text", "text_model"]


@torch.no_grad()
def sample_text(
    model, vocabulary: CharVocabulary, prompt: str, length: int, *, seed: int = 0
) -> tuple[str, float]:
    """``(text, seconds)``: ``length`` characters sampled at temperature 1 after ``prompt``."""
    ids = vocabulary.encode(prompt)[None]
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    out = model.generate(ids, max_new_tokens=length, do_sample=True, generator=generator)
    return vocabulary.decode(out[0, ids.shape[1] :]), time.perf_counter() - began


def text_model(
    size: ModelSize,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    contexts: tuple[int, ...] = (256, 2048),
    variants: tuple[str, ...] = BASELINE_VARIANTS,
    seconds: float | None = None,
    eval_windows: int = 16,
    final_windows: int | None = None,
    sample_length: int = 200,
    prompt: str = "ROMEO:",
    seed: int = 0,
    tokens_per_step: int | None = None,
    log=print,
) -> str:
    """The character LM on Tiny Shakespeare at each context: bits/char on the validation text,
    tokens/s, and a sample per model. ``tokens_per_step``: the batch at each context is this
    divided by the context (every context trains on as many characters); default
    ``training.batch_size``. Writes ``text.md/.json`` and curves per context."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = CharVocabulary.from_text(load_tiny_shakespeare()[0])
    budget = f"{seconds:g} s of training steps each" if seconds else f"{training.max_steps} steps each"
    lines = [
        "## Character-level text model (Tiny Shakespeare)",
        "",
        f"First 90 % of the characters train, last 10 % validate (bits/char over "
        f"{'all' if final_windows is None else final_windows} non-overlapping validation windows of the "
        f"context length); {budget}"
        + (
            ""
            if tokens_per_step is None
            else f", {tokens_per_step} characters per step (batch = that / context)"
        )
        + ". "
        + setting(size, training, batch=None if tokens_per_step is None else "per context below")
        + ".",
        "",
    ]
    payload: dict = {"size": asdict(size), "training": asdict(training), "contexts": {}}
    for context in contexts:
        task = TaskSpec("text", max_length=context, eval_limit=eval_windows, final_limit=final_windows)
        batch = training.batch_size if tokens_per_step is None else max(1, tokens_per_step // context)
        task_training = task.training_config(**{**optimization_options(training), "batch_size": batch})
        runs = compare_attention(
            task,
            variants,
            size,
            task_training,
            out_dir=out_dir / f"context{context}",
            seeds=(seed,),
            seconds=seconds,
            save=True,
            isolate=True,
            log=log,
        )
        samples = {}
        for run in runs:
            if run.error or not run.final:
                continue
            model = from_pretrained(Path(run.directory) / "final")
            text, took = sample_text(
                model, vocabulary, prompt, min(sample_length, context - len(prompt)), seed=seed
            )
            samples[run.variant] = {"text": text, "seconds": took}
            run.extra["sample"] = samples[run.variant]
        section, rows = task_section(task, runs, out_dir, f"text_context{context}", memory=True)
        lines += [f"### context {context} (batch {batch})", "", *section[2:]]
        for variant, info in samples.items():
            lines += [
                f"**{variant}** (sampled in {info['seconds']:.1f} s):",
                "",
                "```",
                prompt + info["text"],
                "```",
                "",
            ]
        payload["contexts"][str(context)] = {"rows": rows, "runs": [asdict(r) for r in runs]}
    return write_report(out_dir, "text", lines, payload)
