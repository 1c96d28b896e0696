"""The package works when installed as a wheel (``pip install .``), not only from the checkout:
the shipped data is package data, found with importlib.resources.

The wheel is built from a clean copy of the sources and installed into a fresh virtual
environment outside the checkout; its dependencies (torch, numpy, safetensors, tqdm) are the ones
of the test environment, made visible through a ``.pth`` file, so nothing is downloaded. The
checkout's own ``src/`` is not visible there: the test asserts that ``performers`` is imported
from the new environment.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a clean copy: no stale build/ directory can leak into the wheel
    source.mkdir()
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(source),
        ]
    )
    (wheel,) = (work / "dist").glob("performers-*.whl")

    env = work / "venv"
    _run([sys.executable, "-m", "venv", str(env)])
    python = env / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    # The test environment's packages (not its editable `performers`: .pth lines in an added
    # directory are not processed, so the checkout's src/ stays invisible).
    ours = sysconfig.get_paths()["purelib"]
    assert ours in site.getsitepackages() or ours in sys.path
    (Path(purelib) / "test-env-dependencies.pth").write_text(ours + "\n")
    # The fresh venv's own setuptools (bundled by ensurepip) would shadow the newer one torch needs.
    _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"])
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel)])
    return env


def test_the_wheel_installs_the_package_and_its_data(wheel_env, tmp_path):
    python = wheel_env / "bin" / "python"
    code = (
        "import performers, pathlib;"
        "from performers.proteins import default_corpus;"
        "from performers.text import load_stsb, load_tiny_shakespeare;"
        "from performers.images import load_mnist;"
        "print(performers.__file__); print(default_corpus()); print(len(load_stsb('test')[0]));"
        "print(len(load_tiny_shakespeare()[1])); print(len(load_mnist()[1]))"
    )
    module, corpus, pairs, characters, images = _run([str(python), "-c", code], cwd=tmp_path).stdout.split()
    assert Path(module).is_relative_to(wheel_env) and not Path(module).is_relative_to(ROOT)
    assert Path(corpus).is_relative_to(wheel_env) and Path(corpus).stat().st_size > 1_000_000
    assert int(pairs) == 1379
    assert int(characters) == 1_115_394 - int(0.9 * 1_115_394) and int(images) == 1000


def test_the_demo_runs_from_the_installed_wheel_in_another_directory(wheel_env, tmp_path):
    env = {**os.environ, "PYTHONPATH": ""}
    _run(
        [
            str(wheel_env / "bin" / "performers"),
            "demo",
            "--steps",
            "2",
            "--threads",
            "1",
            "--test-limit",
            "16",
        ],
        cwd=tmp_path,
        env=env,
    )
    report = (tmp_path / "runs" / "demo" / "report.md").read_text()
    assert "Performer (FAVOR+)" in report and "Transformer (exact)" in report
    # The protein commands of a user's own data, from the installed wheel (shipped FLIP data too).
    proteins = tmp_path / "proteins.fasta"
    proteins.write_text(">p1\nMKVLAAGIVDLLAACDEF\n>p2\nACDEFGHIKLMNPQRSTVWY\n>p3\nMMMKKKLLLAAA\n")
    commands = [
        ["prepare", "--train", str(proteins), "--valid", str(proteins), "--out", "data/mine"],
        ["train", "--data", "data/mine", "--steps", "1", "--batch-size", "2", "--max-length", "32",
         "--d-model", "16", "--layers", "1", "--heads", "2", "--num-features", "8", "--out", "runs/mine"],
        ["evaluate", "runs/demo/favor", "--data", str(proteins), "--per-sequence", "rows.csv"],
        ["embed", "runs/demo/favor", str(proteins), "--out", "embeddings.npz"],
        ["score", "runs/demo/favor", str(proteins), "--out", "scores.csv"],
        ["finetune", "--task", "gb1", "--steps", "1", "--batch-size", "2", "--train-limit", "4",
         "--test-limit", "2", "--max-length", "272", "--d-model", "16", "--layers", "1", "--heads", "2",
         "--num-features", "8"],
        ["predict", "runs/finetune", str(proteins), "--out", "predictions.csv"],
    ]  # fmt: skip
    for command in commands:
        _run([str(wheel_env / "bin" / "performers"), *command], cwd=tmp_path, env=env)
    written_files = ("data/mine/manifest.json", "runs/mine/final/model.safetensors", "rows.csv",
                     "embeddings.npz", "scores.csv", "runs/finetune/metrics.jsonl",
                     "runs/finetune/final/head.safetensors", "runs/finetune/results.json",
                     "predictions.csv")  # fmt: skip
    for written in written_files:
        assert (tmp_path / written).is_file(), written
