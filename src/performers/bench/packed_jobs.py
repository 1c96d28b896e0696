"""``embed``, ``score`` and ``evaluate`` on FASTAs of mixed lengths: packed rows against padded
batches (``--pack`` vs ``--no-pack``), the issue's target being packed ≥ 1.5× faster.

For each size (proteins sampled from the shipped corpus, seeded; the smaller samples are the
first proteins of the larger one) and each task, the command runs packed and padded, each in a
fresh process (``python -m performers ...``, as :mod:`performers.bench.embed_score`: the
layers keep :mod:`performers.bench` from importing :mod:`performers.jobs`, and what is timed
is what a user runs), the two alternating which goes first from task to task and repeat to
repeat. Time is the command's own measurement of its job (model loading, reading, writing and
``evaluate``'s unigram baseline excluded); the median over repeats gives proteins/s and the
speedup ``padded seconds / packed seconds``.

Tasks:

* ``embed`` — ``performers embed`` with a masked LM (mean, last layer), ``--max-tokens`` per pass;
* ``score`` — ``performers score`` with a causal LM: exact log-likelihoods, ``--max-tokens``;
* ``evaluate`` — ``performers evaluate --data FASTA`` with a masked LM, ``--batch-size``
  proteins per batch in file order (packed: the same batches laid end to end).

The models are random (weights drawn after ``torch.manual_seed(seed)``), of the Table-2 size of
``docs/results/proteins.md`` by default (d_model 128, 2 layers, 4 heads, d_ff 512, M = 128,
learned positions covering the longest protein sampled, so nothing is cropped): speed does
not depend on what the weights learned.

Run::

    performers bench packed-jobs --out docs/results/packed_jobs.json
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from performers.bench import embed_score
from performers.bench.embed_score import SECONDS, Spec, save_random_model
from performers.bench.results import write_results
from performers.proteins import default_corpus, read_fasta

__all__ = [
    "DEFAULT_SIZES",
    "TARGET",
    "TASKS",
    "Run",
    "Settings",
    "format_table",
    "measure",
    "run_packed_jobs",
    "sample_proteins",
    "summarize",
]

TASKS = ("embed", "score", "evaluate")
DEFAULT_SIZES = (40, 300, 2000)
TARGET = 1.5  # issue 28: embedding/scoring a FASTA of mixed lengths at least this much faster packed


@dataclass
class Settings:
    """The models and how the commands run."""

    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 512
    num_features: int = 128
    max_tokens: int = 16384
    batch_size: int = 16
    threads: int = 1
    repeats: int = 1
    seed: int = 0
    timeout: float = 900.0


@dataclass
class Run:
    """One command run: ``seconds`` its own timing of the job, or ``error``."""

    task: str
    proteins: int
    residues: int
    pack: bool
    repeat: int
    seconds: float | None = None
    error: str | None = None


def sample_proteins(count: int, seed: int, corpus: str | Path | None = None) -> list[tuple[str, str]]:
    """``count`` ``(id, sequence)`` of the shipped corpus (or ``corpus``), drawn without
    replacement in a seeded order: the first ``n`` of a larger sample are the sample of ``n``."""
    records = [(r.id, r.sequence) for r in read_fasta(default_corpus() if corpus is None else corpus)]
    if count > len(records):
        raise ValueError(f"sizes: at most {len(records)} proteins in the corpus, got {count}")
    return random.Random(seed).sample(records, count)


def _write_fasta(path: Path, proteins: Sequence[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in proteins))
    return path


def _argv(task: str, model: Path, fasta: Path, out: Path, pack: bool, settings: Settings) -> list[str]:
    flag = "--pack" if pack else "--no-pack"
    common = [flag, "--threads", str(settings.threads)]
    if task == "evaluate":
        return [
            "evaluate",
            str(model),
            "--data",
            str(fasta),
            "--batch-size",
            str(settings.batch_size),
            *common,
        ]
    target = out / ("embeddings.npz" if task == "embed" else "scores.csv")
    command = "embed" if task == "embed" else "score"
    return [
        command,
        str(model),
        str(fasta),
        "--out",
        str(target),
        "--max-tokens",
        str(settings.max_tokens),
        *common,
    ]


def _timed(argv: list[str], settings: Settings) -> float:
    """The command's own timing of its job (``... in 1.234 s (...``)."""
    stdout, _ = embed_score.run_command(argv, settings.threads, settings.timeout)
    match = SECONDS.search(stdout)
    if match is None:
        raise RuntimeError(f"no timing in the output: {stdout.strip()[-200:]!r}")
    return float(match.group(1))


def measure(
    tasks: Sequence[str], sizes: Sequence[int], settings: Settings, *, corpus=None, log: Callable = print
) -> list[Run]:
    """Every (size, task, repeat): a packed and a padded run, in alternating order."""
    proteins = sample_proteins(max(sizes), settings.seed, corpus)
    longest = max(len(sequence) for _, sequence in proteins)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="packed_jobs.") as tmp:
        work = Path(tmp)
        spec = Spec(
            task="embed",
            attention="favor",
            length=longest,
            proteins=0,
            d_model=settings.d_model,
            num_layers=settings.num_layers,
            num_heads=settings.num_heads,
            d_ff=settings.d_ff,
            num_features=settings.num_features,
            position="learned",
            seed=settings.seed,
        )
        models = {}
        for head in ("mlm", "clm"):
            (work / head).mkdir()
            models[head] = save_random_model(replace(spec, task=head), head, work / head)
        turn = 0
        for size in sorted(sizes):
            sample = proteins[:size]
            fasta = _write_fasta(work / f"{size}.fasta", sample)
            residues = sum(len(sequence) for _, sequence in sample)
            for repeat in range(settings.repeats):
                for task in tasks:
                    model = models["clm" if task == "score" else "mlm"]
                    order = (True, False) if turn % 2 == 0 else (False, True)
                    turn += 1
                    for pack in order:
                        run = Run(task, size, residues, pack, repeat)
                        try:
                            run.seconds = _timed(_argv(task, model, fasta, work, pack, settings), settings)
                        except (RuntimeError, TimeoutError) as error:
                            run.error = str(error)
                        runs.append(run)
                        log(_describe(run))
    return runs


def _describe(run: Run) -> str:
    head = f"{run.task:>8} {run.proteins:>5} proteins {'packed' if run.pack else 'padded':>6} #{run.repeat}"
    if run.error:
        return f"{head}: {run.error}"
    return f"{head}: {run.seconds:.3f} s, {run.proteins / run.seconds:.1f} proteins/s"


def summarize(runs: Sequence[Run]) -> list[dict]:
    """One row per (task, size): median seconds packed and padded, proteins/s, speedup, and
    whether the speedup reaches :data:`TARGET` (None where a run failed)."""
    rows = []
    keys = list(dict.fromkeys((r.task, r.proteins) for r in runs))
    for task, size in keys:
        mine = [r for r in runs if (r.task, r.proteins) == (task, size)]
        row: dict = {"task": task, "proteins": size, "residues": mine[0].residues}
        errors = [r.error for r in mine if r.error]
        for pack, name in ((True, "packed"), (False, "padded")):
            times = [r.seconds for r in mine if r.pack == pack and r.error is None]
            row[f"{name}_seconds"] = statistics.median(times) if times else None
            row[f"{name}_proteins_per_s"] = size / row[f"{name}_seconds"] if times else None
        both = row["packed_seconds"] is not None and row["padded_seconds"] is not None
        row["speedup"] = row["padded_seconds"] / row["packed_seconds"] if both else None
        row["target_met"] = None if row["speedup"] is None else row["speedup"] >= TARGET
        row["error"] = errors[0] if errors else None
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per task and size."""
    lines = [
        "| task | proteins | residues | padded s | packed s | padded proteins/s | packed proteins/s "
        f"| speedup | ≥ {TARGET}× |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row["speedup"] is None:
            lines.append(
                f"| {row['task']} | {row['proteins']} | {row['residues']} | {row['error']} | | | | | |"
            )
            continue
        lines.append(
            f"| {row['task']} | {row['proteins']} | {row['residues']} | {row['padded_seconds']:.3f} | "
            f"{row['packed_seconds']:.3f} | {row['padded_proteins_per_s']:.1f} | "
            f"{row['packed_proteins_per_s']:.1f} | {row['speedup']:.2f} | "
            f"{'met' if row['target_met'] else 'missed'} |"
        )
    return "\n".join(lines)


def run_packed_jobs(
    tasks: Sequence[str],
    sizes: Sequence[int],
    settings: Settings,
    *,
    out: str | Path,
    command: str,
    corpus: str | Path | None = None,
) -> list[dict]:
    """Measure, then write ``out`` (JSON: settings, every run, the summary) and the markdown
    table beside it (``.md``) through :func:`performers.bench.results.write_results`."""
    start = time.perf_counter()
    runs = measure(tasks, sizes, settings, corpus=corpus)
    rows = summarize(runs)
    s = settings
    markdown = (
        f"# `embed`, `score` and `evaluate`: packed vs padded\n\n`{command}`\n\n"
        f"Random models: d_model {s.d_model}, {s.num_layers} layers, {s.num_heads} heads, d_ff "
        f"{s.d_ff}, M = {s.num_features}, learned positions; {s.threads} thread(s); embed and score "
        f"`--max-tokens {s.max_tokens}`, evaluate `--batch-size {s.batch_size}`. Proteins sampled "
        f"from the shipped corpus (seed {s.seed}). Seconds: the command's own timing of its job, "
        f"median of {s.repeats} run(s), packed and padded alternating, each in a fresh process. "
        f"embed: mean of the last layer (masked LM); score: exact log-likelihoods (causal LM); "
        f"evaluate: masked-LM accuracy and perplexity. Speedup: padded seconds / packed seconds "
        f"(target ≥ {TARGET}×).\n\n{format_table(rows)}\n"
    )
    payload = {
        "command": command,
        "settings": asdict(settings),
        "tasks": list(tasks),
        "sizes": list(sizes),
        "runs": [asdict(r) for r in runs],
        "rows": rows,
    }
    out = Path(out)
    write_results(out, payload, markdown)
    print(format_table(rows))
    print(f"wrote {out} and {out.with_suffix('.md')} in {time.perf_counter() - start:.0f} s")
    return rows
