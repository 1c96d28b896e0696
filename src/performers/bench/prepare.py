"""Throughput and peak memory of :func:`performers.proteins.prepared.prepare`, on the shipped
corpus and on synthetic corpora of any size built from its real proteins.

Each measurement runs ``prepare`` in a fresh subprocess (so no run inherits another's heap):
after the imports the peak resident set is reset (``/proc/self/clear_refs``), then ``prepare``
runs once; we record wall time, CPU time, residues/s, the peak RSS (``VmHWM``) and its growth
over the post-import baseline. glibc is told to return every allocation of 64 KiB or more to the
OS (``MALLOC_MMAP_THRESHOLD_``, as in :mod:`performers.bench.speed`), so the peak is the working
set, not allocator reuse. The issue's targets: ≥ 5 M residues/s, and peak RSS on a 2 GB corpus
within 1.2× of that on a 200 MB one (streaming: memory must not grow with the corpus).

Run (the 2 GB case needs ~4 GB of free disk in ``--workdir`` and a few minutes on a quiet machine)::

    performers bench prepare --sizes 200MB 2GB --workdir /tmp/prepare-bench \\
        --out docs/results/prepare

``--sizes`` may be empty (shipped corpus only); ``--gzip`` compresses the synthetic corpora.
In Python: :func:`synthetic_fasta`, :func:`measure`, :func:`run_report`.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from performers.bench.environment import WORKING_SET_ALLOCATOR
from performers.bench.results import write_results
from performers.proteins import default_corpus, read_fasta
from performers.utils import peak_rss_reset, rss_kib

__all__ = ["measure", "parse_size", "run_report", "synthetic_fasta"]

TARGET_RESIDUES_PER_SECOND = 5e6
TARGET_RSS_RATIO = 1.2
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"200MB"`` → 200_000_000, ``"2GiB"`` → 2**31 (decimal and binary units, bytes if none)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 200MB, 2GB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def synthetic_fasta(
    out_path: str | os.PathLike,
    target_bytes: int,
    seed: int = 0,
    *,
    source: str | os.PathLike | None = None,
    width: int = 60,
) -> dict:
    """Write a FASTA file of at least ``target_bytes`` bytes of text made of the real proteins of
    ``source`` (default: the shipped corpus): passes over all its records, each pass in a new
    random order (``numpy`` generator seeded with ``seed``), every record with a new id
    ``>syn<pass>_<n>`` and its original ``split=`` tag, sequences wrapped at ``width``. A path
    ending in ``.gz`` is gzip-compressed (level 1). Proteins repeat across passes (by design:
    the same real sequences; ``dedupe`` would drop the repeats).

    Returns:
        ``{"path", "bytes" (text bytes), "records", "residues", "passes"}``.
    """
    out_path = Path(out_path)
    rng = np.random.default_rng(seed)
    bodies, tags = [], []
    for record in read_fasta(source or default_corpus()):
        seq = record.sequence
        bodies.append("\n".join(seq[i : i + width] for i in range(0, len(seq), width)) + "\n")
        tags.append(record.fields.get("split", "train"))
    lengths = np.array([len(r.replace("\n", "")) for r in bodies])
    written = records = residues = passes = 0
    opener = (
        (lambda p: gzip.open(p, "wt", compresslevel=1))
        if out_path.suffix == ".gz"
        else (lambda p: open(p, "w"))
    )
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with opener(tmp) as handle:
        while written < target_bytes:
            parts = []
            for n, k in enumerate(rng.permutation(len(bodies))):
                text = f">syn{passes}_{n} split={tags[k]}\n{bodies[k]}"
                parts.append(text)
                written += len(text)
                records += 1
                residues += int(lengths[k])
                if written >= target_bytes:
                    break
            handle.write("".join(parts))
            passes += 1
    tmp.replace(out_path)
    return {
        "path": str(out_path),
        "bytes": written,
        "records": records,
        "residues": residues,
        "passes": passes,
    }


def _worker(spec: dict) -> dict:
    """One measurement, in this (fresh) process: ``prepare(**spec)`` between RSS readings."""
    import resource

    from performers.proteins.prepared import prepare

    out = Path(spec.pop("out_dir"))
    inputs = spec.pop("inputs")
    base = peak_rss_reset()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    manifest = prepare(inputs, out, log=None, **spec)
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    used = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(out)
    residues = manifest["totals"]["residues"]
    return {
        "records": manifest["totals"]["records"],
        "residues": residues,
        "input_bytes": sum(i["bytes"] for i in manifest["inputs"]),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 3),
        "residues_per_second": round(residues / seconds),
        "baseline_rss_mib": round(base / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_rss_growth_mib": round((peak - base) / 1024, 1),
    }


def measure(inputs: list[str | os.PathLike], *, workdir: str | os.PathLike | None = None, **options) -> dict:
    """Run ``prepare(inputs, ...)`` once in a fresh subprocess and measure it (see the module
    docstring); the prepared directory is written under ``workdir`` (default: a temporary
    directory) and removed. ``options`` go to ``prepare`` (``dedupe``, ``valid_fraction``, ...).

    Returns:
        ``{"inputs", "options", "records", "residues", "input_bytes", "seconds", "cpu_seconds",
        "residues_per_second", "baseline_rss_mib", "peak_rss_mib", "peak_rss_growth_mib"}``.
    """
    with tempfile.TemporaryDirectory(dir=workdir, prefix="prepare-bench-") as scratch:
        spec = {"inputs": [str(p) for p in inputs], "out_dir": str(Path(scratch) / "prepared"), **options}
        env = dict(os.environ, **WORKING_SET_ALLOCATOR)
        done = subprocess.run(
            [sys.executable, "-m", "performers.bench.prepare", "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"prepare benchmark worker failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"inputs": spec["inputs"], "options": options, **result}


def run_report(
    out_dir: str | os.PathLike,
    *,
    sizes: list[int] = (),
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    compress: bool = False,
    keep_inputs: bool = False,
    command: str = "",
    log=print,
) -> dict:
    """Measure the shipped corpus and a synthetic corpus of each size; write ``prepare.json``
    and ``prepare.md`` in ``out_dir``; return the JSON object."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(workdir or tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    corpus = measure([default_corpus()], workdir=work)
    rows.append({"name": "shipped corpus (gzip)", **corpus})
    log(_line(rows[-1]))
    for size in sizes:
        path = work / f"synthetic-{size}-seed{seed}.fasta{'.gz' if compress else ''}"
        if not path.exists():
            started = time.perf_counter()
            info = synthetic_fasta(path, size, seed)
            log(
                f"wrote {path}: {info['bytes']:,} bytes of text, {info['records']:,} records "
                f"({time.perf_counter() - started:.0f} s)"
            )
        row = {
            "name": f"synthetic {size / 1e6:,.0f} MB{' (gzip)' if compress else ''}",
            **measure([path], workdir=work),
        }
        rows.append(row)
        log(_line(row))
        if not keep_inputs:
            path.unlink()
    synthetic = rows[1:]
    ratio = synthetic[-1]["peak_rss_mib"] / synthetic[0]["peak_rss_mib"] if len(synthetic) > 1 else None
    growth_ratio = (
        synthetic[-1]["peak_rss_growth_mib"] / max(synthetic[0]["peak_rss_growth_mib"], 1e-9)
        if len(synthetic) > 1
        else None
    )
    report = {
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "rows": rows,
        "peak_rss_ratio_largest_to_smallest": ratio,
        "peak_rss_growth_ratio_largest_to_smallest": growth_ratio,
        "targets": {"residues_per_second": TARGET_RESIDUES_PER_SECOND, "peak_rss_ratio": TARGET_RSS_RATIO},
    }
    write_results(out_dir / "prepare.json", report, _markdown(report))
    if workdir is None and not keep_inputs:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _line(row: dict) -> str:
    return (
        f"{row['name']}: {row['residues']:,} residues in {row['seconds']:.2f} s = "
        f"{row['residues_per_second'] / 1e6:.1f} M residues/s, peak RSS {row['peak_rss_mib']:.0f} MiB "
        f"(+{row['peak_rss_growth_mib']:.0f} MiB over the {row['baseline_rss_mib']:.0f} MiB after imports)"
    )


def _markdown(report: dict) -> str:
    lines = [
        "# `performers prepare`: throughput and peak memory",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}. Each row is one `prepare` run in a fresh subprocess; peak RSS is",
        "`VmHWM` after a reset past the imports (growth = peak minus the post-import RSS).",
        "",
        "| input | input bytes | records | residues | seconds | CPU s | M residues/s "
        "| peak RSS MiB | growth MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['name']} | {r['input_bytes']:,} | {r['records']:,} | {r['residues']:,} "
            f"| {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['residues_per_second'] / 1e6:.1f} "
            f"| {r['peak_rss_mib']:.0f} | {r['peak_rss_growth_mib']:.0f} |"
        )
    wanted = report["targets"]["residues_per_second"]
    slowest = min(r["residues_per_second"] for r in report["rows"])
    lines += [
        "",
        f"* Throughput: slowest {slowest / 1e6:.1f} M residues/s (target ≥ {wanted / 1e6:.0f} M): "
        f"{'met' if slowest >= wanted else 'NOT met'}.",
    ]
    if report["peak_rss_ratio_largest_to_smallest"] is not None:
        ratio, limit = report["peak_rss_ratio_largest_to_smallest"], report["targets"]["peak_rss_ratio"]
        lines.append(
            f"* Peak RSS, largest / smallest synthetic corpus: {ratio:.3f} (target ≤ {limit}): "
            f"{'met' if ratio <= limit else 'NOT met'}; growth over the post-import RSS: "
            f"{report['peak_rss_growth_ratio_largest_to_smallest']:.3f}×."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the worker of measure(): one measurement in a fresh process
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(
            "usage: python -m performers.bench.prepare --worker SPEC_JSON (run by performers bench prepare)"
        )
    print(json.dumps(_worker(json.loads(sys.argv[2]))))
