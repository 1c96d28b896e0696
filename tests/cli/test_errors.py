"""Every command's user errors take one path (issue 26, item 1): a missing model directory or
FASTA file, a malformed FASTA file, an unsupported Hugging Face family, a negative step count ...
print one line ``performers CMD: error: MESSAGE`` on stderr and exit with status 2, no traceback;
``--debug`` / ``PERFORMERS_DEBUG=1`` show the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM
from performers.cli import build_parser, main
from performers.cli.common import USER_ERRORS, UsageError
from performers.proteins import ProteinTokenizer

SRC = Path(__file__).resolve().parents[2] / "src"


def _model_dir(tmp_path_factory, cls) -> Path:
    tokenizer = ProteinTokenizer()
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_id,
        favor=FavorConfig(8, chunk_size=8),
    )
    directory = tmp_path_factory.mktemp("model")
    cls(config).save_pretrained(directory)
    tokenizer.save(directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny trained masked-LM directory (save_pretrained + tokenizer.json)."""
    return _model_dir(tmp_path_factory, PerformerForMaskedLM)


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory) -> Path:
    """A tiny trained causal-LM directory."""
    return _model_dir(tmp_path_factory, PerformerForCausalLM)


@pytest.fixture(scope="module")
def malformed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fasta") / "bad.fa"
    path.write_text(">a split=train\nMKJV\n")  # J is no residue
    return path


@pytest.fixture(scope="module")
def unsupported_hf(tmp_path_factory) -> Path:
    """A tiny Hugging Face model of a family the FAVOR attention does not support (OPT)."""
    pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import OPTConfig, OPTModel

    config = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
    )
    directory = tmp_path_factory.mktemp("opt")
    OPTModel(config).save_pretrained(directory)
    return directory


def one_error_line(capsys, argv: list[str], command: str) -> str:
    """Run ``performers ARGV`` in this process: status 2 and one ``performers COMMAND: error:``
    line on stderr, no traceback; returns the line."""
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, (argv, status, err)
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith(f"performers {command}: error: "), (argv, err)
    assert "Traceback" not in err, (argv, err)
    return lines[0]


MISSING = "/nonexistent/performers-model"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate", MISSING], "config.json"),
        (["embed", MISSING, "{fasta}", "--out", "{tmp}/e.npz"], "cannot load the model"),
        (["score", MISSING, "{fasta}", "--out", "{tmp}/s.csv"], "cannot load the model"),
        (["generate", MISSING, "MKV"], "config.json"),
        (["diagnose", MISSING], "not a model directory"),
        (["finetune", "--pretrained", MISSING, "--steps", "1"], "config.json"),
        (["convert", MISSING, "{tmp}/out"], "not a Hugging Face model directory"),
        (["distill", MISSING, "--out", "{tmp}/d"], "not a Hugging Face model directory"),
    ],
)
def test_a_missing_model_directory(argv, expected, tmp_path, capsys):
    if argv[0] in ("convert", "distill"):
        pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
    fasta = tmp_path / "ok.fa"
    fasta.write_text(">p\nMKV\n")
    argv = [a.format(fasta=fasta, tmp=tmp_path) for a in argv]
    assert expected in one_error_line(capsys, argv, argv[0])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["embed", "{model}", "{missing}", "--out", "{tmp}/e.npz"], "input {missing}: No such file"),
        (["score", "{model}", "{missing}", "--out", "{tmp}/s.csv"], "input {missing}: No such file"),
        (["prepare", "{missing}", "--out", "{tmp}/p"], "{missing}"),
        (["evaluate", "{model}", "--data", "{missing}"], "{missing}: not a FASTA file"),
        (["train", "--train", "{missing}", "--valid", "{missing}", "--steps", "1"], "{missing}"),
    ],
)
def test_a_missing_fasta_file(argv, expected, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PERFORMERS_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "missing.fa"
    values = {"model": model_dir, "missing": missing, "tmp": tmp_path}
    argv = [a.format(**values) for a in argv]
    assert expected.format(**values) in one_error_line(capsys, argv, argv[0])


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "{bad}", "--out", "{tmp}/p"],
        ["embed", "{model}", "{bad}", "--out", "{tmp}/e.npz"],
        ["score", "{model}", "{bad}", "--out", "{tmp}/s.csv"],
        ["evaluate", "{model}", "--data", "{bad}"],
    ],
)
def test_a_malformed_fasta_file(argv, model_dir, malformed, tmp_path, capsys):
    argv = [a.format(model=model_dir, bad=malformed, tmp=tmp_path) for a in argv]
    line = one_error_line(capsys, argv, argv[0])
    assert "bad.fa:2: illegal character 'J'" in line, line
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("command", "extra"),
    [("train", []), ("demo", []), ("finetune", []), ("distill", ["model"])],
)
def test_a_negative_step_count(command, extra, capsys):
    line = one_error_line(capsys, [command, *extra, "--steps", "-3"], command)
    assert f"performers {command}: error: --steps: " in line and "got -3" in line, line


def test_convert_refuses_an_unsupported_hugging_face_family(unsupported_hf, tmp_path, capsys):
    line = one_error_line(capsys, ["convert", str(unsupported_hf), str(tmp_path / "out")], "convert")
    assert "does not support" in line and "'opt'" in line and "supported model types" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["generate", "{clm}", "MKV", "--max-new-tokens", "-1"], "--max-new-tokens: max_new_tokens must be"),
        (["generate", "{clm}", "MKV", "--sample", "--top-p", "2"], "--top-p: top_p must be"),
        (["generate", "{mlm}", "MKV"], "generation needs a causal LM"),
        (["evaluate", "{mlm}", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["evaluate", "{mlm}", "--limit", "-1"], "--limit must be >= 0, got -1"),
        (["embed", "{mlm}", "{fasta}", "--out", "{tmp}/e.npz", "--max-tokens", "0"], "--max-tokens: "),
        (["score", "{mlm}", "{fasta}", "--out", "{tmp}/s.csv", "--max-length", "2"], "--max-length: "),
        (["prepare", "{fasta}", "--out", "{tmp}/p", "--valid-fraction", "2"], "--valid-fraction: "),
        (["train", "--batch-size", "0"], "--batch-size: batch_size must be >= 1, got 0"),
        (["train", "--d-model", "15"], "--d-model: "),
        (["train", "--max-length", "1"], "--max-length: max_length must be >= 3"),
        (["train", "--lr", "-1"], "--lr: learning_rate must be >= 0, got -1.0"),
        (["finetune", "--lr", "-1"], "--lr: learning_rate must be >= 0, got -1.0"),
        (["score", "{mlm}", "{fasta}", "--out", "{tmp}/no/s.csv"], "--out {tmp}/no/s.csv: no such directory"),
        (["distill", "m", "--temperature", "0"], "--temperature: "),
    ],
)
def test_a_bad_value_names_its_option(argv, expected, model_dir, causal_dir, tmp_path, capsys):
    fasta = tmp_path / "ok.fa"
    fasta.write_text(">a\nMKVLA\n")
    values = {"mlm": model_dir, "clm": causal_dir, "fasta": fasta, "tmp": tmp_path}
    argv = [a.format(**values) for a in argv]
    assert expected.format(**values) in one_error_line(capsys, argv, argv[0])


def test_a_bad_option_value_names_the_option(model_dir, capsys):
    line = one_error_line(capsys, ["embed", str(model_dir), "x.fa", "--out", "x.txt"], "embed")
    assert line.endswith("error: --out x.txt: must end in .npz or .safetensors")
    line = one_error_line(capsys, ["train", "--num-features", "0"], "train")
    assert "--num-features: " in line and "softmax" in line
    line = one_error_line(capsys, ["train", "--resume", "--overwrite"], "train")
    assert line.endswith("error: give --resume (continue the run) or --overwrite, not both")


def test_a_command_line_that_cannot_be_parsed_is_one_line_too(capsys):
    for argv, expected in (
        (["train", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
        (["embed", "model.pt"], "the following arguments are required: input, --out"),
        (["score", "m", "in.fa", "--out", "x.csv", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [f"performers {argv[0]}: error: {expected}"], err


def test_debug_keeps_the_traceback(capsys, monkeypatch):
    with pytest.raises(UsageError, match=r"--steps: max_steps must be >= 1, got -3"):
        main(["--debug", "train", "--steps", "-3"])
    monkeypatch.setenv("PERFORMERS_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["evaluate", MISSING])


def test_the_error_path_in_a_real_process(tmp_path):
    """``python -m performers``: exit status 2 and one line, no traceback; with
    ``PERFORMERS_DEBUG=1`` the traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("PERFORMERS_DEBUG", None)
    argv = [sys.executable, "-m", "performers", "embed", MISSING, str(tmp_path / "x.fa"), "--out", "x.npz"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"performers embed: error: input {tmp_path / 'x.fa'}: No such file or directory"
    ]
    assert result.stdout == ""
    debug = subprocess.run(
        argv, capture_output=True, text=True, env={**env, "PERFORMERS_DEBUG": "1"}, timeout=300
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UsageError" in debug.stderr


def test_every_library_input_error_is_a_user_error():
    """One base class: the library's typed input errors are ValueErrors and user errors."""
    from performers.jobs import DiagnoseError
    from performers.models import ModelLoadError
    from performers.proteins import FastaError, PreparedDatasetError, UnknownResidueError
    from performers.training import CheckpointError, ResumeMismatchError, RunDirectoryError
    from performers.utils import DirectoryLockedError, InputError

    for error in (
        UsageError,
        DiagnoseError,
        ModelLoadError,
        FastaError,
        PreparedDatasetError,
        UnknownResidueError,
        CheckpointError,
        ResumeMismatchError,
        RunDirectoryError,
        DirectoryLockedError,
    ):
        assert issubclass(error, InputError) and issubclass(error, ValueError), error
        assert issubclass(error, USER_ERRORS), error


def test_old_option_spellings_are_hidden_aliases(capsys):
    parser = build_parser()
    assert parser.parse_args(["distill", "m", "--warmup-steps", "7"]).warmup == 7
    assert parser.parse_args(["distill", "m"]).warmup == 20
    for old in ("--features", "--num-features", "--num-features-sweep"):
        assert parser.parse_args(["diagnose", "m", old, "8", "16"]).num_features == [8, 16]
    assert parser.parse_args(["bench", "approximation", "--features", "8"]).features == [8]
    for command, hidden, shown in (
        ("distill", "--warmup-steps", "--warmup"),
        ("diagnose", "--features", "--num-features-sweep"),
        ("diagnose", "--num-features ", "--num-features-sweep"),
    ):
        with pytest.raises(SystemExit):
            main([command, "m", "--help"])
        text = capsys.readouterr().out
        assert shown in text and hidden not in text


def test_help_shows_defaults_and_what_train_accepts(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prepared dataset" in text and "FASTA" in text
    assert "(default: 1000)" in text  # --steps
    assert "generalized kernels only) (default: 256)" in text  # --num-features: the one default of M
    assert "projections (default: 0)" in text  # --seed: a default of 0 is shown (0 == False)
