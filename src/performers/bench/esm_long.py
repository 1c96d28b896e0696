"""``performers bench esm-long``: time and peak memory of embedding one long protein with an
ESM-2-shaped model, FAVOR+ against the same model under Hugging Face's ``sdpa`` and ``eager``
attention.

The models are Hugging Face ``EsmModel``\\ s with random weights (seeded) and ESM-2's layout:
rotary positions (so no length limit), vocabulary 33, feed-forward 4 × width, pre-scaled
queries. The shapes are ESM-2's: ``8M`` (6 layers, width 320, 20 heads) and ``35M`` (12, 480,
20), or any ``LAYERSxWIDTHxHEADS``. FAVOR+ is the same model after
:func:`~performers.integrations.transformers.performerize` (``attn_implementation="favor"``).
The protein is ``<cls>``, ``L`` random standard residues, ``<eos>``, with the all-ones attention
mask a tokenizer gives; one forward pass of the encoder under ``torch.inference_mode`` is what
is timed (the embedding; pooling it costs nothing next to it).

Each point runs in a fresh process (``python -m performers.bench.esm_long --worker SPEC``,
through :func:`performers.bench.embed_score.run_command`, as ``bench embed-score`` runs its
commands: ``OMP_NUM_THREADS``, and glibc told to return allocations of 64 KiB or more to the OS
so the peak is the working set). The worker builds the model, runs one 64-residue forward
(lazy initialisation), then:

* **peak MiB** — resets the process's peak resident set (``/proc/self/clear_refs``) and runs one
  forward of the long protein: the growth of the peak is the memory the embedding needs over the
  loaded model (the whole process's peak RSS is recorded too);
* **seconds** — the median of ``repeats`` further forwards; residues/s is ``L / seconds``.

Points that would not finish, or not fit, are **skipped** and said so, not run: within a shape
and attention, a length whose predicted time — the last measured length's time × the growth of
the attention's cost (``L`` for FAVOR+, ``L²`` for ``sdpa`` and ``eager``) — exceeds
``max_seconds``; and an ``eager`` point whose attention matrix (``heads × (L + 2)² × 4 B``, one
of the several ``L × L`` tensors eager attention holds at once, so a lower bound) exceeds the
memory budget. ``sdpa`` on CPU does not build the matrix (its flash kernel works in blocks).
After an error or a timeout, the longer lengths of that attention are skipped too.

Run::

    performers bench esm-long --out docs/results/esm_long.json

(writes ``esm_long.json``, ``esm_long.md`` and ``esm_long.png``; options in
``performers.cli.bench.esm_long``). The report states the target — FAVOR+ at 32k residues at
least 5× faster than ``sdpa`` with no more peak memory — as met or missed, with the numbers.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from performers.bench.embed_score import run_command
from performers.bench.results import write_results
from performers.utils import InputError, peak_rss_reset, rss_kib

__all__ = [
    "ATTENTIONS",
    "DEFAULT_LENGTHS",
    "SHAPES",
    "TARGET_LENGTH",
    "TARGET_SPEEDUP",
    "Point",
    "Shape",
    "Spec",
    "attention_matrix_gib",
    "build_model",
    "markdown",
    "measure",
    "parse_shape",
    "run_esm_long",
    "run_point",
    "target_verdict",
]

ATTENTIONS = ("favor", "sdpa", "eager")
# How a forward's time grows with L at long lengths: FAVOR+ is linear, softmax attention quadratic.
GROWTH = {"favor": 1, "sdpa": 2, "eager": 2}
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
TARGET_LENGTH = 32768
TARGET_SPEEDUP = 5.0
WARMUP_RESIDUES = 64
# ESM-2's vocabulary: <cls> 0, <pad> 1, <eos> 2, <unk> 3, the 20 standard residues 4..23, then
# X B U Z O . - <null_1> and <mask> 32.
VOCAB_SIZE, CLS, PAD, EOS, MASK = 33, 0, 1, 2, 32
RESIDUE_IDS = range(4, 24)


@dataclass(frozen=True)
class Shape:
    """An ESM-2 layout: ``layers`` blocks of ``width`` with ``heads`` heads, feed-forward 4×."""

    name: str
    layers: int
    width: int
    heads: int

    def describe(self) -> str:
        return (
            f"{self.layers} layers, width {self.width}, {self.heads} heads of "
            f"{self.width // self.heads}, feed-forward {4 * self.width}"
        )


SHAPES = {"8M": Shape("8M", 6, 320, 20), "35M": Shape("35M", 12, 480, 20)}


def parse_shape(text: str) -> Shape:
    """``8M``, ``35M`` (ESM-2's) or ``LAYERSxWIDTHxHEADS`` (e.g. ``2x16x2``).

    Raises:
        InputError: an unknown name, or dimensions that are not positive or a width that the
            heads do not divide.
    """
    if text in SHAPES:
        return SHAPES[text]
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InputError(
            f"--shapes: unknown shape {text!r}; give {', '.join(SHAPES)} or LAYERSxWIDTHxHEADS (e.g. 2x16x2)"
        )
    layers, width, heads = (int(p) for p in parts)
    if min(layers, width, heads) < 1 or width % heads:
        raise InputError(
            f"--shapes: {text!r} needs layers, width and heads >= 1 with heads dividing the width, "
            f"got {layers} layers, width {width}, {heads} heads"
        )
    return Shape(text, layers, width, heads)


@dataclass
class Spec:
    """One point: a shape, an attention and a protein length (residues)."""

    shape: Shape
    attention: str
    length: int
    num_features: int = 256
    threads: int = 2
    repeats: int = 3
    seed: int = 0


@dataclass
class Point:
    spec: Spec
    seconds: float | None = None  # median of the timed forwards
    residues_per_s: float | None = None
    peak_extra_mib: float | None = None  # growth of the peak RSS during one forward
    peak_rss_mib: float | None = None  # the whole worker process (None when run in process)
    first_call_s: float | None = None  # the forward whose memory was measured
    predicted_seconds: float | None = None  # from the previous measured length, when there is one
    attention_matrix_gib: float | None = None  # eager only: one heads × (L+2)² float32 tensor
    skipped: str | None = None
    error: str | None = None


def attention_matrix_gib(spec: Spec) -> float:
    """GiB of one float32 ``heads × (L + 2)²`` attention matrix (the protein and its ``<cls>``,
    ``<eos>``)."""
    tokens = spec.length + 2
    return spec.shape.heads * tokens**2 * 4 / 2**30


def build_model(spec: Spec) -> torch.nn.Module:
    """A random ``EsmModel`` of ``spec.shape`` (weights drawn after ``torch.manual_seed``) under
    ``spec.attention``: ``"favor"`` (performerized, M = ``spec.num_features``), ``"sdpa"`` or
    ``"eager"``; in eval mode."""
    from transformers import EsmConfig, EsmModel

    from performers.integrations.transformers import performerize
    from performers.layers import FavorConfig

    shape = spec.shape
    config = EsmConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.width,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=4 * shape.width,
        position_embedding_type="rotary",  # no position table: any length runs
        max_position_embeddings=1026,  # ESM-2's; unused with rotary positions
        pad_token_id=PAD,
        mask_token_id=MASK,
        token_dropout=True,
        emb_layer_norm_before=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(spec.seed)
    model = EsmModel(config, add_pooling_layer=False).eval()
    if spec.attention == "favor":
        performerize(model, FavorConfig(num_features=spec.num_features, seed=spec.seed))
    elif spec.attention in ("sdpa", "eager"):
        model.set_attn_implementation(spec.attention)
    else:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {spec.attention!r}")
    return model


def _protein(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<cls>``, ``length`` random standard residues, ``<eos>``: ``(ids, attention_mask)``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    residues = torch.randint(RESIDUE_IDS.start, RESIDUE_IDS.stop, (length,), generator=generator)
    ids = torch.cat([torch.tensor([CLS]), residues, torch.tensor([EOS])]).unsqueeze(0)
    return ids, torch.ones_like(ids)


def run_point(spec: Spec) -> Point:
    """Measure one point in this process (a fresh worker process in :func:`measure`)."""
    torch.set_num_threads(spec.threads)
    model = build_model(spec)

    def embed(length: int) -> Callable[[], None]:
        ids, mask = _protein(length, spec.seed)

        def forward() -> None:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)

        return forward

    embed(WARMUP_RESIDUES)()
    forward = embed(spec.length)
    base = peak_rss_reset()
    start = time.perf_counter()
    forward()
    point = Point(spec, first_call_s=time.perf_counter() - start)
    point.peak_extra_mib = (rss_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(spec.repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    point.seconds = statistics.median(times)
    point.residues_per_s = spec.length / point.seconds
    return point


def _spec_from_json(data: dict) -> Spec:
    return Spec(**{**data, "shape": Shape(**data["shape"])})


def _in_subprocess(spec: Spec, timeout: float) -> Point:
    """:func:`run_point` in a fresh process; errors and timeouts become the point's ``error``."""
    argv = ["--worker", json.dumps(asdict(spec))]
    try:
        stdout, peak_mib = run_command(argv, spec.threads, timeout, module="performers.bench.esm_long")
    except (RuntimeError, TimeoutError) as error:
        return Point(spec, error=str(error))
    data = json.loads(stdout.strip().splitlines()[-1])
    return Point(**{**data, "spec": spec, "peak_rss_mib": peak_mib})


def _in_process(spec: Spec, timeout: float) -> Point:
    del timeout  # a point in this process runs to the end
    return run_point(spec)


def _skip_reason(point: Point, max_seconds: float, max_memory_gib: float) -> str | None:
    matrix = point.attention_matrix_gib
    if matrix is not None and matrix > max_memory_gib:
        return f"skipped: predicted attention matrix {matrix:,.1f} GiB > budget {max_memory_gib:g} GiB"
    if point.predicted_seconds is not None and point.predicted_seconds > max_seconds:
        return f"skipped: predicted {point.predicted_seconds:,.0f} s > {max_seconds:g} s"
    return None


def measure(
    shapes: list[Shape],
    attentions: list[str],
    lengths: list[int],
    *,
    base: Spec,
    max_seconds: float,
    max_memory_gib: float,
    timeout: float = 3600.0,
    in_process: bool = False,
    log: Callable[[str], None] = print,
) -> list[Point]:
    """Every (shape, attention, length) point, lengths ascending; points predicted to exceed
    ``max_seconds`` (one forward) or, for ``eager``, whose attention matrix exceeds
    ``max_memory_gib`` are skipped (module docstring). ``in_process`` measures in this process
    instead of a fresh one per point (quick checks: no isolation, no whole-process peak)."""
    runner = _in_process if in_process else _in_subprocess
    points = []
    for shape in shapes:
        for attention in attentions:
            last: Point | None = None  # the last measured length: what predictions grow from
            failed_at: int | None = None
            for length in sorted(lengths):
                spec = replace(base, shape=shape, attention=attention, length=length)
                point = Point(spec)
                if attention == "eager":
                    point.attention_matrix_gib = attention_matrix_gib(spec)
                if last is not None:
                    growth = (length / last.spec.length) ** GROWTH[attention]
                    point.predicted_seconds = last.seconds * growth
                if failed_at is not None:
                    point.skipped = f"skipped: failed at {failed_at} residues"
                else:
                    point.skipped = _skip_reason(point, max_seconds, max_memory_gib)
                if point.skipped is None:
                    measured = runner(spec, timeout)
                    point = replace(
                        measured,
                        predicted_seconds=point.predicted_seconds,
                        attention_matrix_gib=point.attention_matrix_gib,
                    )
                    if point.error is None:
                        last = point
                    else:
                        failed_at = length
                points.append(point)
                log(_describe(point))
    return points


def _describe(p: Point) -> str:
    s = p.spec
    head = f"{s.shape.name:>5} {s.attention:>5} {s.length:>6} residues"
    if p.skipped or p.error:
        return f"{head}: {p.skipped or p.error}"
    return (
        f"{head}: {p.seconds:.3f} s, {p.residues_per_s:,.0f} residues/s, "
        f"peak +{p.peak_extra_mib:,.0f} MiB (first call {p.first_call_s:.3f} s)"
    )


# ----------------------------------------------------------------------------- report


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _measured(points: list[Point], shape: Shape, attention: str) -> dict[int, Point]:
    return {
        p.spec.length: p
        for p in points
        if p.spec.shape == shape and p.spec.attention == attention and p.seconds is not None
    }


def target_verdict(points: list[Point], shape: Shape) -> str:
    """The target at :data:`TARGET_LENGTH` residues — FAVOR+ at least :data:`TARGET_SPEEDUP`×
    faster than ``sdpa`` with no more peak memory — as met, missed or not measured, with the
    numbers."""
    favor = _measured(points, shape, "favor").get(TARGET_LENGTH)
    sdpa = _measured(points, shape, "sdpa").get(TARGET_LENGTH)
    goal = (
        f"FAVOR+ ≥ {TARGET_SPEEDUP:g}× faster than `sdpa` at {TARGET_LENGTH} residues, at no more peak memory"
    )
    if favor is None or sdpa is None:
        missing = [name for name, p in (("FAVOR+", favor), ("sdpa", sdpa)) if p is None]
        reasons = [
            f"{p.spec.attention}: {p.skipped or p.error}"
            for p in points
            if p.spec.shape == shape
            and p.spec.length == TARGET_LENGTH
            and p.spec.attention in ("favor", "sdpa")
            and (p.skipped or p.error)
        ]
        why = f" ({'; '.join(reasons)})" if reasons else ""
        return f"Target ({goal}): **not measured** — no {' and no '.join(missing)} point{why}."
    speedup = sdpa.seconds / favor.seconds
    fast = speedup >= TARGET_SPEEDUP
    lean = favor.peak_extra_mib <= sdpa.peak_extra_mib
    verdict = "met" if fast and lean else "missed"
    return (
        f"Target ({goal}): **{verdict}** — {favor.seconds:.3g} s vs {sdpa.seconds:.3g} s "
        f"({speedup:.1f}×, {'≥' if fast else '<'} {TARGET_SPEEDUP:g}×); peak "
        f"{favor.peak_extra_mib:,.0f} MiB vs {sdpa.peak_extra_mib:,.0f} MiB "
        f"({'no more' if lean else 'more'})."
    )


def _shape_section(points: list[Point], shape: Shape) -> list[str]:
    rows = [p for p in points if p.spec.shape == shape]
    lines = [
        f"## {shape.name}-shaped: {shape.describe()}",
        "",
        "| residues | attention | seconds | residues/s | peak MiB | process peak RSS MiB | note |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for p in sorted(rows, key=lambda p: (p.spec.length, ATTENTIONS.index(p.spec.attention))):
        lines.append(
            f"| {p.spec.length} | {p.spec.attention} | {_number(p.seconds, '.3f')} "
            f"| {_number(p.residues_per_s, ',.0f')} | {_number(p.peak_extra_mib, ',.0f')} "
            f"| {_number(p.peak_rss_mib, ',.0f')} | {p.skipped or p.error or ''} |"
        )
    favor, sdpa = _measured(points, shape, "favor"), _measured(points, shape, "sdpa")
    both = sorted(set(favor) & set(sdpa))
    lines += ["", "FAVOR+ against `sdpa` at each length both were measured:", ""]
    lines += ["| residues | speed-up (sdpa s / FAVOR+ s) | peak MiB FAVOR+ / sdpa |", "|---:|---:|---:|"]
    for length in both:
        f, s = favor[length], sdpa[length]
        # Below 1 MiB the peaks are page-granular noise, not a ratio worth printing.
        memory = f"{f.peak_extra_mib / s.peak_extra_mib:.2f}" if s.peak_extra_mib >= 1 else "—"
        lines.append(f"| {length} | {s.seconds / f.seconds:.2f}× | {memory} |")
    if not both:
        lines.append("| — | not measured | |")
    return [*lines, "", target_verdict(points, shape), ""]


def markdown(
    points: list[Point],
    shapes: list[Shape],
    *,
    base: Spec,
    command: str,
    max_seconds: float,
    max_memory_gib: float,
    in_process: bool,
) -> str:
    """The report: per shape, one row per (length, attention), the FAVOR+/sdpa ratios and the
    target's verdict."""
    where = (
        "all points in one process (`--in-process`: a quick check; no isolation)"
        if in_process
        else "each point in a fresh process"
    )
    lines = [
        "# ESM-shaped models on one long protein: FAVOR+ vs `sdpa` and `eager`",
        "",
        f"`{command}`",
        "",
        f"Hugging Face `EsmModel`, random weights (seed {base.seed}), rotary positions, vocabulary "
        f"{VOCAB_SIZE}, float32, {base.threads} thread(s), {where}. FAVOR+: the same model after "
        f"`performerize` (M = {base.num_features}). One protein of L random residues plus `<cls>` "
        f"and `<eos>`, batch 1, all-ones attention mask. Seconds: median of {base.repeats} "
        f"forward passes (`torch.inference_mode`) after a 64-residue warm-up and one measured "
        f"forward; peak MiB: growth of the process's peak resident set during that forward, over "
        f"the loaded model. Skipped, not run: a length predicted (the last measured length's "
        f"time × its growth, L for FAVOR+, L² for softmax) to take over {max_seconds:g} s per "
        f"forward, and an `eager` length whose attention matrix (heads × (L+2)² × 4 B, a lower "
        f"bound on what eager holds) exceeds {max_memory_gib:g} GiB.",
        "",
    ]
    for shape in shapes:
        lines += _shape_section(points, shape)
    return "\n".join(lines)


def plot(points: list[Point], path: Path) -> Path | None:
    """Seconds and peak MiB against L, one line per (shape, attention); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter, LogFormatter, NullFormatter
    except ImportError:
        return None
    measured = [p for p in points if p.seconds is not None]
    if not measured:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    series = sorted(
        {(p.spec.shape.name, p.spec.attention) for p in measured},
        key=lambda s: (s[0], ATTENTIONS.index(s[1])),
    )
    colours = {a: f"C{i}" for i, a in enumerate(ATTENTIONS)}
    names = list(dict.fromkeys(name for name, _ in series))
    styles = {name: ("-", "--", ":", "-.")[i % 4] for i, name in enumerate(names)}
    for ax, key, label in (
        (axes[0], "seconds", "seconds per protein"),
        (axes[1], "peak_extra_mib", "peak MiB over the loaded model"),
    ):
        for name, attention in series:
            pts = [p for p in measured if (p.spec.shape.name, p.spec.attention) == (name, attention)]
            values = [max(getattr(p, key), 1e-3) for p in pts]  # a log axis needs > 0
            # One colour per attention, one line style per shape: the pairs to compare stand out.
            ax.plot(
                [p.spec.length for p in pts],
                values,
                marker="o",
                color=colours[attention],
                linestyle=styles[name],
                label=f"{name} {attention}",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        # Plain numbers (1024, 0.5) rather than powers (no mathtext); the y axis labels minor
        # ticks too when its range is under about two decades.
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_xlabel("residues L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_esm_long(
    shapes: list[Shape],
    attentions: list[str],
    lengths: list[int],
    *,
    base: Spec,
    out: str | Path,
    command: str,
    max_seconds: float,
    max_memory_gib: float,
    timeout: float = 3600.0,
    in_process: bool = False,
    log: Callable[[str], None] = print,
) -> list[Point]:
    """Measure every point; write ``out`` (JSON), its ``.md`` report and ``.png`` plot."""
    start = time.perf_counter()
    points = measure(
        shapes,
        attentions,
        lengths,
        base=base,
        max_seconds=max_seconds,
        max_memory_gib=max_memory_gib,
        timeout=timeout,
        in_process=in_process,
        log=log,
    )
    out = Path(out)
    record = {
        "command": command,
        "settings": {
            "shapes": [asdict(s) for s in shapes],
            "attentions": list(attentions),
            "lengths": sorted(lengths),
            "num_features": base.num_features,
            "threads": base.threads,
            "repeats": base.repeats,
            "seed": base.seed,
            "max_seconds": max_seconds,
            "max_memory_gib": max_memory_gib,
            "timeout": timeout,
            "in_process": in_process,
        },
        "points": [asdict(p) for p in points],
        "targets": {shape.name: target_verdict(points, shape) for shape in shapes},
    }
    report = markdown(
        points,
        shapes,
        base=base,
        command=command,
        max_seconds=max_seconds,
        max_memory_gib=max_memory_gib,
        in_process=in_process,
    )
    write_results(out, record, report)
    picture = plot(points, out.with_suffix(".png"))
    log(
        f"wrote {out}, {out.with_suffix('.md')}{f' and {picture}' if picture else ''} in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return points


def _worker(spec_json: str) -> int:
    """Measure one point in this (fresh) process and print it as JSON (see :func:`measure`)."""
    data = asdict(run_point(_spec_from_json(json.loads(spec_json))))
    data.pop("spec")
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(
            "usage: python -m performers.bench.esm_long --worker SPEC_JSON (run by performers bench esm-long)"
        )
    sys.exit(_worker(sys.argv[2]))
