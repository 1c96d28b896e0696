"""The shape of the code: one home for each convention, no private APIs, data found as package data.

(The layering itself is checked by import-linter, `lint-imports`, run by `make test`.)
"""

import ast
import math
from pathlib import Path

import pytest
import torch

from performers.training import lr_factor, make_scheduler

SRC = Path(__file__).resolve().parents[1] / "src" / "performers"


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
