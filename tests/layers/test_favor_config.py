"""FavorConfig: one validated object for every FAVOR option, from the command line to the layer."""

import dataclasses
import json

import pytest

from performers import FavorConfig, PerformerConfig
from performers.cli import build_parser
from performers.cli.common import UsageError
from performers.cli.favor_options import favor_config_from_args
from performers.ops import DEFAULT_CHUNK_SIZE, KERNELS


def test_defaults_are_the_one_default_everywhere():
    config = FavorConfig()
    assert (config.num_features, config.kernel, config.projection, config.row_norms) == (
        256,
        "softmax",
        "orthogonal",
        "chi",
    )
    assert config.chunk_size == DEFAULT_CHUNK_SIZE and config.block_size is None
    assert PerformerConfig().favor == config


def test_frozen_and_json_round_trip():
    config = FavorConfig(
        32, "favor++", projection="iid", redraw_every=7, seed=3, chunk_size=16, block_size=128
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_features = 8
    assert FavorConfig.from_json(config.to_json()) == config
    assert FavorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert dataclasses.replace(config, kernel="relu").kernel == "relu"


@pytest.mark.parametrize(
    "fields,error,pattern",
    [
        ({"kernel": "gauss"}, ValueError, r"FavorConfig\.kernel: unknown kernel 'gauss'; known kernels are"),
        ({"kernel": len}, TypeError, r"FavorConfig\.kernel must be a registry name"),
        ({"num_features": None}, ValueError, r"kernel 'softmax' needs random features"),
        ({"num_features": 0}, ValueError, r"FavorConfig\.num_features must be >= 1, got 0"),
        ({"num_features": 2.0}, TypeError, r"FavorConfig\.num_features must be an int"),
        ({"num_features": True}, TypeError, r"FavorConfig\.num_features must be an int"),
        ({"projection": "gaussian"}, ValueError, r"FavorConfig\.projection must be one of"),
        ({"row_norms": "unit"}, ValueError, r"FavorConfig\.row_norms must be one of"),
        (
            {"projection": "iid", "row_norms": "sqrt_d"},
            ValueError,
            r"only defined for projection='orthogonal'",
        ),
        ({"redraw_every": -1}, ValueError, r"FavorConfig\.redraw_every must be >= 0"),
        ({"redraw_every": None}, TypeError, r"FavorConfig\.redraw_every must be an int"),
        ({"seed": -2}, ValueError, r"FavorConfig\.seed must be >= 0"),
        ({"chunk_size": 0}, ValueError, r"FavorConfig\.chunk_size must be >= 1"),
        ({"block_size": -4}, ValueError, r"FavorConfig\.block_size must be >= 1"),
    ],
)
def test_validated_once_with_messages_that_name_the_field(fields, error, pattern):
    with pytest.raises(error, match=pattern):
        FavorConfig(**fields)


def test_generalized_kernels_may_go_without_projection():
    config = FavorConfig(None, "relu")
    assert not config.has_projection and FavorConfig(8, "relu").has_projection


def test_from_dict_reads_the_0_1_0_names_and_rejects_unknown_fields():
    legacy = {"num_features": 0, "kernel": "elu", "projection_kind": "orthogonal", "redraw_every": None}
    assert FavorConfig.from_dict(legacy) == FavorConfig(None, "elu", redraw_every=0)
    with pytest.raises(ValueError, match=r"unknown FavorConfig field 'features'"):
        FavorConfig.from_dict({"features": 8})
    with pytest.raises(ValueError, match=r"both 'projection_kind' \(old name\) and 'projection'"):
        FavorConfig.from_dict({"projection_kind": "iid", "projection": "iid"})
    with pytest.raises(ValueError, match="not valid JSON"):
        FavorConfig.from_json("{")


def test_the_cli_declares_the_favor_options_once_with_registry_choices(capsys):
    args = build_parser().parse_args(
        [
            "train",
            "--num-features",
            "64",
            "--kernel",
            "softmax-hyperbolic",
            "--projection",
            "iid",
            "--seed",
            "5",
        ]
    )
    config = favor_config_from_args(args)
    assert config == FavorConfig(
        64, "softmax-hyperbolic", projection="iid", seed=5
    )  # --seed seeds projections
    args = build_parser().parse_args(
        ["train", "--seed", "5", "--projection-seed", "9", "--redraw-every", "0"]
    )
    assert favor_config_from_args(args).seed == 9 and favor_config_from_args(args).redraw_every == 0
    assert favor_config_from_args(build_parser().parse_args(["train"])).num_features == 256
    # The demo is a fixed, small experiment: its own M (64).
    assert favor_config_from_args(build_parser().parse_args(["demo"])).num_features == 64
    relu = build_parser().parse_args(["convert", "in", "out", "--kernel", "relu", "--num-features", "0"])
    assert favor_config_from_args(relu) == FavorConfig(None, "relu")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--kernel", "gauss"])
    assert "invalid choice: 'gauss'" in capsys.readouterr().err
    for name in KERNELS:
        assert build_parser().parse_args(["distill", "m", "--kernel", name]).kernel == name
    with pytest.raises(UsageError, match=r"--num-features: FavorConfig.num_features: kernel 'softmax' needs"):
        favor_config_from_args(build_parser().parse_args(["train", "--num-features", "0"]))
