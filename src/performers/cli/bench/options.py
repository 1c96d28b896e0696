"""Options that several ``performers bench`` commands share, declared once: the sweep of feature
counts ``--num-features-sweep`` (the single ``--num-features`` comes from
:func:`performers.cli.favor_options.add_favor_options`) and old spellings kept as hidden aliases."""

from __future__ import annotations

import argparse

__all__ = ["add_hidden_alias", "add_num_features_sweep"]


def add_hidden_alias(parser, old: str, action: argparse.Action) -> None:
    """Let ``old`` (an earlier spelling) set the same value as ``action``, without showing it in
    ``--help``."""
    kwargs = {"nargs": action.nargs, "type": action.type, "choices": action.choices}
    parser.add_argument(old, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_num_features_sweep(parser, default: list[int], help: str = "feature counts M to sweep") -> None:
    """``--num-features-sweep M [M ...]`` (dest ``features``; old spelling ``--features``)."""
    action = parser.add_argument(
        "--num-features-sweep",
        dest="features",
        type=int,
        nargs="+",
        default=default,
        metavar="M",
        help=f"{help} (default {' '.join(map(str, default))})",
    )
    add_hidden_alias(parser, "--features", action)
