"""The shape of the code: one home for each convention, no private APIs, data found as package data.

(The layering itself is checked by import-linter, `lint-imports`, run by `make test`.)
"""

import ast
import math
from pathlib import Path

import pytest
import torch

from performers.training import lr_factor, make_scheduler

SRC = Path(__file__).resolve().parents[2] / "src" / "performers"


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_the_ignore_index_is_written_once():
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.UnaryOp)
                and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant)
                and node.operand.value == 100
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert [where.split(":")[0] for where in found] == ["utils/labels.py"], found


def test_no_private_argparse_api_and_no_data_paths_from_file_locations():
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id == "argparse":
                    pytest.fail(f"{path.relative_to(SRC)}:{node.lineno}: argparse.{node.attr}")
                assert node.attr != "_actions", f"{path.relative_to(SRC)}:{node.lineno}"
            # Path(__file__).parents[...] breaks in an installed wheel (the shipped data is package data)
            if isinstance(node, ast.Attribute) and node.attr == "parents":
                pytest.fail(f"{path.relative_to(SRC)}:{node.lineno}: a path from the module's location")


def test_one_learning_rate_schedule():
    """Warm-up then cosine is written once (training.schedule); every loop uses it."""
    cosines = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "cos" and getattr(node.value, "id", "") == "math"
    ]
    assert [where.split(":")[0] for where in cosines] == ["training/schedule.py"], cosines
    assert [lr_factor(s, warmup_steps=2, total_steps=6) for s in (0, 1, 2, 4, 6, 9)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    )
    assert lr_factor(5, warmup_steps=2, total_steps=6, schedule="constant") == 1.0
    assert lr_factor(3, warmup_steps=0, total_steps=4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 4)))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    scheduler = make_scheduler(optimizer, warmup_steps=2, total_steps=6)
    assert scheduler.get_last_lr() == [1.0]
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_scheduler(optimizer, warmup_steps=0, total_steps=1, schedule="linear")


def test_the_ops_know_nothing_of_torch_distributed():
    """Collectives live in performers.distributed; the ops see other shards only through the
    SequenceShards protocol (performers.ops.shards)."""
    for path, tree in _modules():
        if path.relative_to(SRC).parts[0] != "ops":
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("torch.distributed") for n in names), f"{path.relative_to(SRC)}"


def test_the_ops_export_what_a_user_calls_and_each_direction_has_its_reference():
    """performers.ops.__all__ names only things that exist and no internal helper; every
    direction package (ops/bidirectional, ops/causal) holds a naive reference module whose
    functions its paths are tested against."""
    import importlib

    import performers.ops as ops

    assert len(ops.__all__) == len(set(ops.__all__))
    assert [name for name in ops.__all__ if not hasattr(ops, name)] == []
    internals = {
        "guarded_divide",
        "key_offsets",
        "safe_reciprocal",
        "stabilize_keys",
        "stabilize_queries",
        "exp_form",
        "ExpForm",
        "causal_linear_attention",
        "causal_linear_attention_step",
        "BACKENDS",
        "FavorCall",
        "check_favor_call",
    }
    assert internals.isdisjoint(ops.__all__)
    directions = [p.name for p in (SRC / "ops").iterdir() if p.is_dir() and (p / "favor.py").exists()]
    assert sorted(directions) == ["bidirectional", "causal"]
    for direction in directions:
        naive = importlib.import_module(f"performers.ops.{direction}.naive")
        assert naive.__all__ and all(callable(getattr(naive, name)) for name in naive.__all__)
        for path in ("generic", "fused"):
            assert (SRC / "ops" / direction / f"{path}.py").exists(), (direction, path)


def test_one_name_per_backend_idea():
    """The ops' implementation choice and the layers' attention choice have different names."""
    import performers.layers as layers
    import performers.ops as ops

    assert ops.OP_BACKENDS == ("auto", "torch", "triton")
    assert layers.ATTENTION_BACKENDS == ("favor", "exact", "local", "identity")
    assert "BACKENDS" not in ops.__all__ and "BACKENDS" not in layers.__all__
