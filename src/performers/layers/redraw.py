"""Feature redraw schedule: step every :class:`FavorAttention` of a model together."""

from __future__ import annotations

from torch import nn

from performers.layers.favor import FavorAttention
from performers.utils.validation import is_int

__all__ = ["FeatureRedrawer", "favor_modules"]


def favor_modules(model: nn.Module) -> list[FavorAttention]:
    """Every :class:`FavorAttention` inside ``model``, in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, FavorAttention)]


class FeatureRedrawer:
    """Redraws the random projections of a model every ``every`` training steps.

    Call :meth:`step` once per optimizer step (after ``optimizer.step()``)::

        redrawer = FeatureRedrawer(model, every=1000)
        for batch in data:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            redrawer.step()

    The redrawer itself holds no state: the step and draw counters are buffers of each
    :class:`FavorAttention`, saved with the model, and the new matrices are pure functions of
    ``(seed, layer_index, redraw_count)``. So a run restored from a checkpoint, and every rank
    of a data-parallel job, redraws at the same steps and draws the same matrices.

    Args:
        model: any module; all :class:`FavorAttention` inside it are stepped.
        every: redraw interval in steps; None uses each module's own ``config.redraw_every``
            (:attr:`FavorConfig.redraw_every`); 0 disables.
    """

    def __init__(self, model: nn.Module, every: int | None = None) -> None:
        if every is not None and (not is_int(every) or every < 0):
            raise ValueError(f"every must be None or an int >= 0, got {every!r}")
        self.every = every
        self.modules = favor_modules(model)

    def step(self) -> bool:
        """Count one training step in every module; returns True if any projection was redrawn."""
        redrawn = False
        for module in self.modules:
            redrawn |= module.training_step(self.every)
        return redrawn

    def redraw(self) -> None:
        """Redraw every projection now (each module's ``redraw_count`` goes up by one)."""
        for module in self.modules:
            module.redraw()
