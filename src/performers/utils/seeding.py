"""Seeds derived from a base seed and indices, so that every random stream of a run is a pure
function of its coordinates (layer, redraw, epoch, batch slot) and needs no storing."""

from __future__ import annotations

from performers.utils.validation import is_int

__all__ = ["derive_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """The SplitMix64 output function: a bijective 64-bit mixer with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *indices: int) -> int:
    """A generator seed for ``(seed, *indices)``, e.g. ``(seed, layer, redraw)``.

    Each value is folded into a 64-bit state through SplitMix64, so nearby tuples (layer 0 and
    1, draw 7 and 8) give unrelated seeds; a plain sum such as ``seed + layer + count`` would
    make layer 1's first draw equal layer 0's second. The result is a non-negative int below
    ``2**63``, accepted by :meth:`torch.Generator.manual_seed` everywhere.

    Raises:
        ValueError: a value is not an int >= 0.
    """
    state = None
    for position, value in enumerate((seed, *indices)):
        if not is_int(value) or value < 0:
            name = "seed" if position == 0 else f"index {position - 1}"
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        state = _splitmix64(value & _MASK64) if state is None else _splitmix64(state ^ (value & _MASK64))
    return state >> 1
