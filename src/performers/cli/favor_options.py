"""The FAVOR options of every command, declared once: :func:`add_favor_options` puts them on a
parser (kernel names from the registry; one default for each, ``FavorConfig()``'s, e.g. M = 256,
shown in ``--help``) and :func:`favor_config_from_args` turns them into the
:class:`~performers.FavorConfig` the command passes on. :data:`FAVOR_FIELDS` maps each field to
the ``dest`` of its option (how a saved run's ``favor`` fields are named by option)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from performers.cli.common import user_errors_named
from performers.layers import FavorConfig
from performers.layers.favor_config import PROJECTIONS, ROW_NORMS
from performers.ops import KERNELS, OP_BACKENDS

__all__ = ["FAVOR_FIELDS", "FAVOR_OPTIONS", "add_favor_options", "favor_config_from_args"]

FAVOR_OPTIONS = tuple(f.name for f in fields(FavorConfig))

# FavorConfig field -> dest of its option (the seed's option is --projection-seed).
FAVOR_FIELDS: dict[str, str] = {name: "projection_seed" if name == "seed" else name for name in FAVOR_OPTIONS}


def _count_or_none(text: str) -> int | None:
    """An int >= 0 where 0 means None (no projection / automatic)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value or None


def add_favor_options(
    parser: argparse.ArgumentParser,
    defaults: FavorConfig | None = None,
    *,
    only: tuple[str, ...] = FAVOR_OPTIONS,
) -> None:
    """Add ``--num-features --kernel --projection --row-norms --redraw-every --projection-seed
    --chunk-size --block-size --backend --recompute-features`` (or the subset ``only``, by field
    name) to ``parser``.

    Defaults come from ``defaults`` (``FavorConfig()``: one default everywhere, e.g. M = 256;
    ``--help`` states it, through :class:`~performers.cli.common.HelpFormatter`).
    ``--projection-seed`` defaults to the command's own ``--seed`` when it has one.
    """
    d = defaults or FavorConfig()
    unknown = set(only) - set(FAVOR_OPTIONS)
    if unknown:
        raise ValueError(f"unknown FAVOR option(s) {sorted(unknown)}; the options are {FAVOR_OPTIONS}")
    group = parser.add_argument_group("FAVOR attention")
    add = {
        "num_features": lambda: group.add_argument(
            "--num-features",
            type=_count_or_none,
            default=d.num_features,
            help="random features M per layer (0: no projection, generalized kernels only)",
        ),
        "kernel": lambda: group.add_argument(
            "--kernel",
            choices=sorted(KERNELS),
            default=d.kernel,
            help="FAVOR estimator",
        ),
        "projection": lambda: group.add_argument(
            "--projection",
            choices=PROJECTIONS,
            default=d.projection,
            help="random projection: block-orthogonal (FAVOR+) or iid Gaussian",
        ),
        "row_norms": lambda: group.add_argument(
            "--row-norms",
            choices=ROW_NORMS,
            default=d.row_norms,
            help="orthogonal row norms: chi (unbiased) or sqrt_d (regularized)",
        ),
        "redraw_every": lambda: group.add_argument(
            "--redraw-every",
            type=int,
            default=d.redraw_every,
            help="draw new projections every N training steps, 0 = never",
        ),
        "seed": lambda: group.add_argument(
            "--projection-seed",
            type=int,
            default=None,
            help="projection seed: layer l draws from (seed, l, draw) (default: --seed, else 0)",
        ),
        "chunk_size": lambda: group.add_argument(
            "--chunk-size",
            type=int,
            default=d.chunk_size,
            help="positions per chunk of the causal algorithm",
        ),
        "block_size": lambda: group.add_argument(
            "--block-size",
            type=_count_or_none,
            default=d.block_size,
            help="positions per block of the fused bidirectional path (default: sized for the cache)",
        ),
        "backend": lambda: group.add_argument(
            "--backend",
            choices=OP_BACKENDS,
            default=d.backend,
            help="auto (Triton on CUDA if installed), torch, triton",
        ),
        "recompute_features": lambda: group.add_argument(
            "--recompute-features",
            action="store_true",
            default=d.recompute_features,
            help="recompute query features in backward instead of keeping them (less memory)",
        ),
    }
    for name in only:
        add[name]()
    parser.set_defaults(_favor_defaults=d, _favor_options=tuple(only))


def favor_config_from_args(args: argparse.Namespace) -> FavorConfig:
    """The :class:`FavorConfig` of parsed options (fields not on the parser keep the defaults
    given to :func:`add_favor_options`).

    Raises:
        UsageError: a combination FavorConfig refuses, naming the option (``--num-features: ...``).
    """
    values = {name: getattr(args, name) for name in args._favor_options if name != "seed"}
    if "seed" in args._favor_options:
        seed = args.projection_seed if args.projection_seed is not None else getattr(args, "seed", None)
        if seed is not None:
            values["seed"] = seed
    defaults = args._favor_defaults.to_dict()
    names = {name: "--" + dest.replace("_", "-") for name, dest in FAVOR_FIELDS.items()}
    with user_errors_named(names, "FAVOR options"):
        return FavorConfig.from_dict({**defaults, **values})
