"""Throughput and peak memory of ``performers embed`` and ``performers score`` on long
proteins: FAVOR+ against the exact-softmax twin of the same weights.

Tasks:

* ``embed`` — ``performers embed`` with a masked LM (mean-pooled, last layer): one
  bidirectional pass per protein.
* ``score-clm`` — ``performers score`` with a causal LM: the exact log-likelihood, one causal
  pass per protein.
* ``score-pll`` — ``performers score`` with a masked LM: the pseudo-log-likelihood, ``n`` masked
  copies of a protein of ``n`` residues (``n`` passes' worth of tokens), so it runs on the
  shortest length only by default.

The benchmark runs the commands themselves, each point in a fresh process (``python -m
performers ...``): the layers keep :mod:`performers.bench` from importing
:mod:`performers.jobs`, and what is measured is what a user runs. A random model of the
given sizes (rotary positions, so 32k residues fit) is saved once per head with its tokenizer;
the exact twin is the same directory loaded with ``--attention exact`` (same weights and
projections). Proteins are random standard residues (seeded). Time is the command's own
measurement of its embedding/scoring call (model loading and file writing excluded); proteins/s
and residues/s follow from it. Peak memory is the process's peak resident set
(``ru_maxrss`` of that child, glibc told to return allocations of 64 KiB or more to the OS)
minus that of the same command on one 64-residue protein: the memory the long proteins add.

Run::

    performers bench embed-score --out docs/results/embed_score.json

(writes ``embed_score.json`` and ``embed_score.md``; options in ``performers.cli.bench.embed_score``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from performers.bench.environment import WORKING_SET_ALLOCATOR
from performers.bench.results import write_results
from performers.layers import FavorConfig
from performers.models import PerformerConfig, build_model
from performers.proteins import ProteinTokenizer

__all__ = [
    "FAVOR_DEFAULTS",
    "TASKS",
    "Point",
    "Spec",
    "format_table",
    "measure",
    "run_command",
    "run_embed_score",
    "save_random_model",
    "write_proteins",
]

FAVOR_DEFAULTS = FavorConfig(num_features=64)
"""The FAVOR options of the random model by default (the demo's M)."""

TASKS = ("embed", "score-clm", "score-pll")
DEFAULT_LENGTHS = (1024, 8192, 32768)
BASELINE_RESIDUES = 64
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# The commands print "... in 1.234 s (...": the duration of their embedding/scoring call.
SECONDS = re.compile(r" in ([0-9.]+) s \(")


@dataclass
class Spec:
    """One measurement point and the model it uses."""

    task: str
    attention: str
    length: int  # residues per protein
    proteins: int
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 256
    num_features: int = 64
    position: str = "rotary"
    model: str | None = None  # a trained model directory instead of a random model of the sizes above
    max_tokens: int = 16384
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0


@dataclass
class Point:
    spec: Spec
    seconds: float | None = None
    proteins_per_s: float | None = None
    residues_per_s: float | None = None
    peak_rss_mib: float | None = None  # the whole process
    peak_extra_mib: float | None = None  # minus the same command on one short protein
    error: str | None = None


def save_random_model(spec: Spec, task: str, directory: Path) -> Path:
    """A random ``task`` (``"mlm"``/``"clm"``) model of ``spec``'s sizes and its tokenizer, saved
    in ``directory`` (weights drawn after ``torch.manual_seed(spec.seed)``)."""
    tokenizer = ProteinTokenizer()
    config = PerformerConfig(
        vocab_size=len(tokenizer),
        d_model=spec.d_model,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        d_ff=spec.d_ff,
        max_position_embeddings=max(spec.length + 2, 1024),
        position=spec.position,
        dropout=0.0,
        pad_token_id=tokenizer.pad_id,
        favor=FavorConfig(num_features=spec.num_features, seed=spec.seed),
    )
    torch.manual_seed(spec.seed)
    build_model(config, task).save_pretrained(directory)
    tokenizer.save(directory / "tokenizer.json")
    return directory


def write_proteins(path: Path, count: int, length: int, seed: int) -> Path:
    """``count`` proteins of ``length`` random standard residues, as FASTA."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    with open(path, "w") as handle:
        for i in range(count):
            picks = torch.randint(len(STANDARD_RESIDUES), (length,), generator=generator).tolist()
            handle.write(f">p{i}\n{''.join(STANDARD_RESIDUES[j] for j in picks)}\n")
    return path


def run_command(
    argv: list[str], threads: int, timeout: float, *, module: str = "performers"
) -> tuple[str, float]:
    """Run ``python -m MODULE ARGV`` (the ``performers`` command, or a bench's worker module) in a
    fresh process: ``(stdout, peak RSS MiB)``.

    Raises ``RuntimeError`` with the last line of stderr when it fails, ``TimeoutError``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(WORKING_SET_ALLOCATOR)  # the peak RSS is then the working set, not allocator reuse
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            # wait4 gives this child's own resource usage, peak RSS included.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError(f"timeout after {timeout:.0f}s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError((stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:300])
    return stdout, usage.ru_maxrss / 1024  # KiB on Linux


def _argv(spec: Spec, model: Path, fasta: Path, out_dir: Path) -> list[str]:
    command = "embed" if spec.task == "embed" else "score"
    out = out_dir / ("embeddings.npz" if command == "embed" else "scores.csv")
    return [
        command,
        str(model),
        str(fasta),
        "--out",
        str(out),
        "--attention",
        spec.attention,
        "--max-tokens",
        str(spec.max_tokens),
        "--device",
        spec.device,
        "--dtype",
        spec.dtype,
    ]


def measure(
    tasks: list[str],
    backends: list[str],
    lengths: dict[str, list[int]],
    *,
    base: Spec,
    residues_per_point: int,
    timeout: float = 1800.0,
    log=print,
) -> list[Point]:
    """Every (task, backend, length) point; ``lengths[task]`` lists the protein lengths of a
    task; a point holds ``max(1, residues_per_point // length)`` proteins (one for
    ``score-pll``). A backend stops growing the length of a task after an error or timeout."""
    points = []
    with tempfile.TemporaryDirectory(prefix="embed_score.") as tmp:
        work = Path(tmp)
        longest = max((n for task in tasks for n in lengths[task]), default=0)
        models: dict[str, Path] = {}
        for head in sorted({"clm" if task == "score-clm" else "mlm" for task in tasks}):
            if base.model is not None:
                models[head] = Path(base.model)
            else:
                directory = work / f"model-{head}"
                directory.mkdir()
                models[head] = save_random_model(replace(base, length=longest), head, directory)
        baseline_fasta = write_proteins(work / "baseline.fasta", 1, BASELINE_RESIDUES, base.seed)
        for task in tasks:
            model = models["clm" if task == "score-clm" else "mlm"]
            for attention in backends:
                spec = replace(base, task=task, attention=attention, length=BASELINE_RESIDUES, proteins=1)
                try:
                    _, baseline_mib = run_command(
                        _argv(spec, model, baseline_fasta, work), base.threads, timeout
                    )
                except (RuntimeError, TimeoutError) as error:
                    points.append(Point(spec, error=f"baseline: {error}"))
                    log(_describe(points[-1]))
                    continue
                for length in sorted(lengths[task]):
                    proteins = 1 if task == "score-pll" else max(1, residues_per_point // length)
                    spec = replace(spec, length=length, proteins=proteins)
                    fasta = work / f"{proteins}x{length}.fasta"
                    if not fasta.exists():
                        write_proteins(fasta, proteins, length, base.seed)
                    point = Point(spec)
                    try:
                        stdout, peak_mib = run_command(_argv(spec, model, fasta, work), base.threads, timeout)
                        match = SECONDS.search(stdout)
                        if match is None:
                            raise RuntimeError(f"no timing in the output: {stdout.strip()[-200:]!r}")
                        point.seconds = float(match.group(1))
                        point.proteins_per_s = proteins / point.seconds
                        point.residues_per_s = proteins * length / point.seconds
                        point.peak_rss_mib = peak_mib
                        point.peak_extra_mib = peak_mib - baseline_mib
                    except (RuntimeError, TimeoutError) as error:
                        point.error = str(error)
                    points.append(point)
                    log(_describe(point))
                    if point.error is not None:
                        break
    return points


def _describe(p: Point) -> str:
    s = p.spec
    head = f"{s.task:>9} {s.attention:>5} {s.proteins:>3} x {s.length:>6} residues"
    if p.error:
        return f"{head}: {p.error}"
    return (
        f"{head}: {p.seconds:.3f} s, {p.proteins_per_s:.3g} proteins/s, {p.residues_per_s:.0f} residues/s, "
        f"peak RSS {p.peak_rss_mib:.0f} MiB "
        f"(+{p.peak_extra_mib:.0f} MiB over one {BASELINE_RESIDUES}-residue protein)"
    )


def format_table(points: list[Point]) -> str:
    """Markdown table; ``× exact`` is FAVOR+'s residues/s over the exact twin's at the same point."""
    exact = {
        (p.spec.task, p.spec.length): p.residues_per_s
        for p in points
        if p.spec.attention == "exact" and p.error is None
    }
    lines = [
        "| task | attention | residues/protein | proteins | seconds | proteins/s | residues/s | × exact "
        "| peak RSS MiB | + over baseline MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        s = p.spec
        if p.error:
            lines.append(f"| {s.task} | {s.attention} | {s.length} | {s.proteins} | {p.error} | | | | | |")
            continue
        ratio = exact.get((s.task, s.length)) if s.attention == "favor" else None
        ratio_text = f"{p.residues_per_s / ratio:.2f}" if ratio else ""
        lines.append(
            f"| {s.task} | {s.attention} | {s.length} | {s.proteins} | {p.seconds:.3f} | "
            f"{p.proteins_per_s:.3g} | {p.residues_per_s:.0f} | {ratio_text} | {p.peak_rss_mib:.0f} | "
            f"{p.peak_extra_mib:.0f} |"
        )
    return "\n".join(lines)


def run_embed_score(
    tasks: list[str],
    backends: list[str],
    lengths: dict[str, list[int]],
    *,
    base: Spec,
    residues_per_point: int,
    timeout: float,
    out: str | Path,
    command: str,
    settings: dict,
) -> list[Point]:
    """Measure every point, write ``out`` (JSON) and the markdown table next to it (``.md``)."""
    start = time.perf_counter()
    points = measure(
        tasks, backends, lengths, base=base, residues_per_point=residues_per_point, timeout=timeout
    )
    payload = {"command": command, "settings": settings, "points": [asdict(p) for p in points]}
    out = Path(out)
    model = base.model or (
        f"a random model: d_model {base.d_model}, {base.num_layers} layers, {base.num_heads} heads, "
        f"d_ff {base.d_ff}, M = {base.num_features}, {base.position} positions"
    )
    markdown = (
        f"# `performers embed` and `performers score`: FAVOR+ vs the exact twin\n\n`{command}`\n\n"
        f"Model: {model}; {base.dtype} on {base.device}, {base.threads} thread(s), --max-tokens "
        f"{base.max_tokens}. Each row is one fresh `performers embed|score` process on random proteins; "
        f"seconds: the command's own timing of its embedding/scoring call (loading and writing "
        f"excluded); peak RSS: the whole process, and its growth over the same command on one "
        f"{BASELINE_RESIDUES}-residue protein. `score-pll`: pseudo-log-likelihood of a masked model "
        f"(n masked copies per protein); `score-clm`: exact log-likelihood of a causal model.\n\n"
        f"{format_table(points)}\n"
    )
    write_results(out, payload, markdown)
    md = out.with_suffix(".md")
    print(format_table(points))
    print(f"wrote {out} and {md} in {time.perf_counter() - start:.0f} s")
    return points
