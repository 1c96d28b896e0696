"""The shape of performers.ops: references apart from fast paths, no asserts, package-level names."""

import ast
from pathlib import Path

import pytest

import performers.ops

OPS = Path(performers.ops.__file__).parent
FAST_PATHS = {
    "performers.ops.attention",
    "performers.ops.call",
    "performers.ops.bidirectional.favor",
    "performers.ops.bidirectional.fused",
    "performers.ops.bidirectional.generic",
    "performers.ops.causal.favor",
    "performers.ops.causal.fused",
    "performers.ops.causal.generic",
    "performers.ops.causal.packed",
    "performers.ops.causal.recurrent",
    "performers.ops.generic_features",
}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


@pytest.mark.parametrize(
    "reference",
    [
        "naive",
        "numerics",
        "features",
        "kernels",
        "favor_plus_plus",
        "bidirectional/naive",
        "causal/naive",
    ],
)
def test_references_and_shared_helpers_import_no_fast_path(reference):
    assert not imported_modules(OPS / f"{reference}.py") & FAST_PATHS


def test_no_assert_statements_in_ops():
    # Input checks must survive `python -O`: typed errors, never `assert`.
    offenders = [
        f"{path.relative_to(OPS)}:{node.lineno}"
        for path in sorted(OPS.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert offenders == []


def test_package_level_names():
    expected = set(
        "DEFAULT_CHUNK_SIZE KERNELS OP_BACKENDS FavorState FeatureMapOutput Kernel exact_attention "
        "favor_attention favor_attention_step favor_plus_plus_parameters feature_map "
        "gaussian_positive_features gaussian_projection generalized_features get_kernel "
        "hyperbolic_softmax_features kernel_attention linear_attention make_projection "
        "naive_favor_attention optimal_positive_features orthogonal_projection positive_softmax_features "
        "register_kernel theory trigonometric_softmax_features".split()
    )
    assert expected <= set(performers.ops.__all__)
    assert all(hasattr(performers.ops, name) for name in performers.ops.__all__)
    assert "softmax_kernel" not in performers.ops.__all__
    assert not (OPS / "exact.py").exists()
