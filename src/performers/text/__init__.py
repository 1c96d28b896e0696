"""Text data, and nothing else (like :mod:`performers.proteins`): the STS Benchmark shipped with
the package. It imports no model and no training code."""

from performers.text.stsb import load_stsb

__all__ = ["load_stsb"]
