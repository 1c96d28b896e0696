"""Preemption: SIGTERM, SIGINT and SIGUSR1 stop a run cleanly at the end of an optimizer step.

Schedulers preempt with a signal: SLURM and Kubernetes send SIGTERM and kill a few seconds or
minutes later, SLURM's ``--signal=USR1@90`` warns with SIGUSR1 ahead of the end, and Ctrl-C is
SIGINT. :func:`preemption_signals` (entered by :meth:`~performers.training.Trainer.fit` and by
:func:`~performers.integrations.distill.distill`) turns the first of them into a request: the
loop finishes the optimizer step it is in, writes a checkpoint, leaves the run directory (its
lock released) and raises :class:`Preempted`, whose :attr:`~Preempted.exit_status` the command
line exits with (:data:`EXIT_STATUS`: 0 for SIGUSR1, "requeue me"; the conventional 128 + N
otherwise). A second SIGINT raises :class:`KeyboardInterrupt` at once, as Ctrl-C twice should —
unless it follows the first within :data:`ECHO_SECONDS`: a launcher passing the terminal's Ctrl-C
on to processes that got it already (``torchrun`` does) is not a second press. A second SIGTERM
or SIGUSR1 changes nothing (the run is already stopping).

Under ``torch.distributed`` the processes agree after every step: each votes the signal it
received, in the exchange that also shares the outcome of rank 0's metrics and checkpoint
(:func:`~performers.training.collective.collectively`, one all-reduce of two numbers). A signal
delivered to any rank (a launcher that signals rank 0 only) or to every rank (SLURM signals all
its tasks) stops all of them after the same step, and no rank leaves before the checkpoint is
written.

The handlers are installed only while a run owns the process, only from the main thread (Python
delivers signals there; elsewhere the process keeps its handlers), and the caller's handlers are
put back when the run returns or raises.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ECHO_SECONDS",
    "EXIT_STATUS",
    "SIGNALS",
    "Preempted",
    "PreemptionRequest",
    "preemption_signals",
]

# The signals that stop a run (SIGUSR1 does not exist on Windows).
SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)

# The exit status of a run stopped by each signal: SIGUSR1 asks to be requeued (a success for
# the job script: nothing failed); the others are the shell's 128 + N of a process ended by N.
EXIT_STATUS: dict[int, int] = {int(s): 128 + int(s) for s in SIGNALS}
if hasattr(signal, "SIGUSR1"):
    EXIT_STATUS[int(signal.SIGUSR1)] = 0


# A SIGINT this soon after the first is the same Ctrl-C passed on by a launcher, not a second one.
ECHO_SECONDS = 1.0


class Preempted(Exception):
    """The run stopped on a signal after step ``step``, its checkpoint in ``checkpoints``
    (None: the run had no output directory, nothing was saved); resume to continue it exactly."""

    def __init__(self, signum: int, step: int, checkpoints: Path | None) -> None:
        self.signum, self.step, self.checkpoints = int(signum), step, checkpoints
        where = "nothing saved" if checkpoints is None else f"checkpoint written to {checkpoints}"
        super().__init__(f"stopped by {self.signal_name} at step {step}; {where}")

    def __reduce__(self):  # pickled whole (a run in a child process reports it to its parent)
        return type(self), (self.signum, self.step, self.checkpoints)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """The documented status for the process (:data:`EXIT_STATUS`)."""
        return EXIT_STATUS.get(self.signum, 128 + self.signum)


class PreemptionRequest:
    """The first stop signal received while :func:`preemption_signals` is active (``signum``,
    None until then)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0  # time.monotonic() of the first signal

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
            # os.write: a signal handler may interrupt a print() in progress (re-entrant I/O).
            os.write(
                2,
                f"performers: {signal.Signals(signum).name} received; stopping after this step "
                "and writing a checkpoint (Ctrl-C again to abort at once)\n".encode(),
            )
        elif signum == signal.SIGINT and time.monotonic() - self._first_at >= ECHO_SECONDS:
            raise KeyboardInterrupt


_active: PreemptionRequest | None = None  # the request of the outermost active block


@contextlib.contextmanager
def preemption_signals() -> Iterator[PreemptionRequest]:
    """Inside: SIGTERM, SIGINT and SIGUSR1 set the yielded request's ``signum`` instead of ending
    the process; the previous handlers are restored on the way out. A signal the block did not
    act on (one that came after the run's last check, which follows its final checkpoint: the
    block ends normally) is then delivered again, to those handlers: deferred, never lost. Re-entrant
    (a nested block shares the outer one's request). From a thread other than the main one the
    handlers cannot be set: the request then never fires and signals keep their usual effect."""
    global _active
    if _active is not None:
        yield _active
        return
    request = PreemptionRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _active = request
    ended_normally = False
    try:
        for s in SIGNALS:
            signal.signal(s, request._handle)
        yield request
        ended_normally = True
    finally:
        for s, handler in previous.items():
            # None: a handler not set from Python, which cannot be put back; the default is.
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        _active = None
    if ended_normally and request.signum is not None:
        signal.raise_signal(request.signum)
