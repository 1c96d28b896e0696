"""A run directory belongs to one run: who may write in it, and what a fresh run does with the
files of an earlier one.

* :func:`owned` — the directory's lock (:class:`~performers.utils.DirectoryLock`) for the whole
  run: a second run into it fails at once naming the holder (pid, host); the lock of a killed
  run is taken over, and said so.
* :func:`start_fresh` — a fresh run (not resumed) into a directory that holds an earlier run
  (checkpoints or a saved ``final/`` model) refuses with :class:`RunDirectoryError` when told
  not to overwrite (the commands with ``--resume`` without ``--overwrite``); otherwise the
  earlier run's files (:data:`RUN_FILES`) are moved, never deleted, to a sibling
  ``<directory>.old-<YYYYmmdd-HHMMSS>`` (with a warning unless asked for). Other files in the
  directory are left alone.
* :func:`keep_metrics_through` — a resumed run drops the metrics its interrupted predecessor
  logged after the checkpoint (a torn last line, from a kill mid-write, included).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from performers.training.checkpoint import PREFIX
from performers.utils import DirectoryLock, atomic_write
from performers.utils.errors import InputError
from performers.utils.locking import describe_holder

__all__ = [
    "RUN_FILES",
    "RunDirectoryError",
    "earlier_run",
    "keep_metrics_through",
    "move_aside",
    "owned",
    "start_fresh",
]

# What a run writes into its directory: the files of "a run" that overwrite moves aside. The
# results a finished run's job writes (results.json, the fine-tuned model's test predictions)
# go too: left behind, they would sit beside a new run's files as if that run had written them.
RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "final", "results.json", "test_predictions.csv")


class RunDirectoryError(InputError):
    """A fresh run into a directory that holds an earlier run; the message says what it holds
    and the ways on (resume, overwrite, another directory)."""


@contextlib.contextmanager
def owned(directory: str | os.PathLike, *, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold ``directory``'s lock for the block (re-entrant within a process).

    Raises:
        performers.utils.DirectoryLockedError: another live process holds it.
    """
    lock = DirectoryLock(directory)
    with lock:
        if lock.stale:
            log(
                f"{directory}: took over the lock of a run that ended without releasing it "
                f"({describe_holder(lock.stale)}; killed?)"
            )
        yield Path(directory)


def earlier_run(directory: str | os.PathLike) -> list[str]:
    """What of an earlier run ``directory`` holds: ``["checkpoints step-00000003..step-00000006",
    "final/"]`` (empty: nothing a fresh run could lose)."""
    directory = Path(directory)
    found = []
    steps = sorted(p.name for p in (directory / "checkpoints").glob(f"{PREFIX}*"))
    if steps:
        found.append(f"checkpoints {steps[0]}" + (f"..{steps[-1]}" if len(steps) > 1 else ""))
    if (directory / "final").exists():
        found.append("final/")
    return found


def move_aside(directory: str | os.PathLike) -> Path | None:
    """Move the run files of ``directory`` (:data:`RUN_FILES`) into a new sibling
    ``<directory>.old-<YYYYmmdd-HHMMSS>`` (``-1``, ``-2``, ... if taken); returns it (None when
    there was nothing to move). Renames only: nothing is copied or deleted."""
    directory = Path(directory)
    present = [directory / name for name in RUN_FILES if (directory / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = directory.with_name(f"{directory.name}.old-{stamp}")
    suffix = 0
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            suffix += 1
            target = directory.with_name(f"{directory.name}.old-{stamp}-{suffix}")
    for path in present:
        os.replace(path, target / path.name)
    return target


def start_fresh(
    directory: str | os.PathLike,
    *,
    overwrite: bool | None = None,
    clear: bool = True,
    log: Callable[[str], None] = print,
) -> None:
    """Make ``directory`` ready for a fresh run, or refuse.

    An earlier run (:func:`earlier_run`) there is

    * ``overwrite=False`` (what ``performers train`` and ``distill`` pass without
      ``--overwrite``): refused, nothing touched;
    * ``overwrite=True``: moved aside (:func:`move_aside`);
    * ``overwrite=None`` (the Python default, for callers that offer no choice, e.g. the demo
      and fine-tuning commands): moved aside too, with a warning — never mixed, never lost.

    Otherwise only the metrics and TensorBoard files of a run that never reached a checkpoint
    are removed. ``clear=False`` (the processes of a job that write no files) only refuses.

    Raises:
        RunDirectoryError: an earlier run is there and ``overwrite`` is False.
    """
    directory = Path(directory)
    earlier = earlier_run(directory)
    if earlier and overwrite is False:
        raise RunDirectoryError(
            f"{directory}: holds an earlier run ({', '.join(earlier)}); continue it with --resume "
            "(resume=True), move it aside with --overwrite (overwrite=True), or choose another directory"
        )
    if not clear:
        return
    moved = move_aside(directory) if earlier or overwrite else None
    if moved is not None:
        log(f"{directory}: moved the earlier run to {moved}")
        if overwrite is None:
            warnings.warn(
                f"{directory}: held an earlier run ({', '.join(earlier)}), moved to {moved} "
                "(pass overwrite=True to do so without this warning, overwrite=False to refuse)",
                stacklevel=3,
            )
    # Metrics of a run that never checkpointed cannot be resumed: a fresh run starts its own.
    (directory / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(directory / "tensorboard", ignore_errors=True)


def keep_metrics_through(path: str | os.PathLike, step: int) -> None:
    """Keep the records of ``path`` (JSON lines with a ``step``) up to ``step``, atomically.

    A last line that does not parse (torn by a kill mid-write) is dropped; any other line that
    does not parse is dropped with a warning naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            record_step = record["step"]
        except (json.JSONDecodeError, TypeError, KeyError):
            if number < len(lines) and line.strip():
                warnings.warn(f"{path}:{number}: not a metrics record, dropped", stacklevel=2)
            continue
        if isinstance(record_step, int) and record_step <= step:
            kept.append(line)
    text = "".join(line + "\n" for line in kept)
    atomic_write(path, lambda tmp: tmp.write_text(text))
