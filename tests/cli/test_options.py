"""Options every command spells alike (issue 32, item 5): ``--threads`` and ``--device`` on every
command that computes, a default shown in every ``--help``, ``--checkpoint-every``, the FASTA
cache (``--cache-dir``), and output paths checked before any work starts."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import performers.cli.convert
import performers.cli.demo
import performers.cli.diagnose
import performers.cli.distill
import performers.cli.embed
import performers.cli.evaluate
import performers.cli.finetune
import performers.cli.predict
import performers.cli.prepare
import performers.cli.score
import performers.cli.train
from performers import PerformerForCausalLM, PerformerForMaskedLM
from performers.cli import build_parser, main
from performers.cli.options import data_from_args
from performers.jobs.results_file import Metric
from tests.cli.test_errors import _model_dir
from tests.cli.test_proteins import TINY_TRAIN

# Every command that runs a model, with what it needs to parse (the model need not exist).
COMPUTE = {
    "demo": ["demo"],
    "train": ["train"],
    "finetune": ["finetune"],
    "evaluate": ["evaluate", "m"],
    "embed": ["embed", "m", "in.fa", "--out", "x.npz"],
    "score": ["score", "m", "in.fa", "--out", "x.csv"],
    "generate": ["generate", "m", "MKV"],
    "diagnose": ["diagnose", "m"],
    "distill": ["distill", "m"],
    "convert": ["convert", "m", "out"],
    "predict": ["predict", "m", "in.fa", "--out", "x.csv"],
}
NOT_COMPUTING = {"prepare", "bench"}  # tokenizes files / has its own per-benchmark options


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _walk(parser: argparse.ArgumentParser, path: str = "performers"):
    """``(path, parser)`` of the command line and of every command and bench subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory, PerformerForMaskedLM)


@pytest.fixture(scope="module")
def clm_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory, PerformerForCausalLM)


@pytest.fixture
def fasta(tmp_path) -> Path:
    path = tmp_path / "in.fa"
    path.write_text(">a\nMKVLA\n>b\nWWYQ\n")
    return path


# ---- --threads and --device ----------------------------------------------------------------


def test_every_computing_command_takes_threads_and_device_spelled_alike():
    parser = build_parser()
    assert set(COMPUTE) == set(_commands(parser)) - NOT_COMPUTING  # a new command joins the table
    helps = {}
    for name, argv in COMPUTE.items():
        args = parser.parse_args([*argv, "--threads", "3", "--device", "cpu"])
        assert (args.threads, args.device) == (3, "cpu"), name
        defaults = parser.parse_args(argv)
        assert (defaults.threads, defaults.device) == (None, "auto"), name
        options = {a.dest: a.help for a in _commands(parser)[name]._actions}
        helps[name] = (options["threads"], options["device"])
    assert len(set(helps.values())) == 1, helps  # one helper registers both


@pytest.mark.parametrize("name", sorted(COMPUTE))
def test_a_bad_device_or_thread_count_is_refused_before_any_work(name, tmp_path, cli_error):
    # The model "m" does not exist: an error about it would mean the model was looked at first.
    argv = [a.replace("x.", f"{tmp_path}/x.") if a.startswith("x.") else a for a in COMPUTE[name]]
    if name == "convert":
        argv = ["convert", "m", str(tmp_path / "out")]
    argv = (
        [*argv, "--out", str(tmp_path / "run")] if name in ("demo", "train", "finetune", "distill") else argv
    )
    cli_error([*argv, "--device", "tpu:9"], match=r"error: --device: device must be a torch device")
    cli_error([*argv, "--threads", "0"], match=r"error: --threads must be >= 1, got 0")


def test_evaluate_embed_score_and_generate_run_with_threads_and_device(
    mlm_dir, clm_dir, fasta, tmp_path, capsys
):
    compute = ["--threads", "2", "--device", "cpu"]
    assert main(["evaluate", str(mlm_dir), "--data", str(fasta), *compute]) == 0
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert main(["embed", str(mlm_dir), str(fasta), "--out", str(tmp_path / "e.npz"), *compute]) == 0
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert main(["score", str(clm_dir), str(fasta), "--out", str(tmp_path / "s.csv"), *compute]) == 0
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert main(["generate", str(clm_dir), "MKV", "--max-new-tokens", "2", "--sample", *compute]) == 0
    assert torch.get_num_threads() == 2
    out = capsys.readouterr().out
    assert "accuracy" in out and "e.npz" in out and "s.csv" in out


def _record(calls: list, result):
    def job(*args, **kwargs):
        calls.append(kwargs)
        return result

    return job


def test_the_training_commands_and_diagnose_pass_the_device_to_their_job(monkeypatch, tmp_path, capsys):
    calls: list[dict] = []
    compute = ["--threads", "2", "--device", "cpu"]
    cpu = torch.device("cpu")
    monkeypatch.setattr(performers.cli.train, "train_protein_model", _record(calls, SimpleNamespace(test={})))
    assert main(["train", *compute, "--out", str(tmp_path / "t")]) == 0
    monkeypatch.setattr(performers.cli.demo, "compare", _record(calls, "report"))
    assert main(["demo", *compute, "--out", str(tmp_path / "d")]) == 0
    test = {"spearman": 0.5, "mse": 1.0, "proteins": 2}
    metrics = {"spearman": Metric(0.5, None, "none", True, 2), "mse": Metric(1.0, 2.0, "mean", False, 2)}
    result = {"test": test, "metrics": metrics}
    monkeypatch.setattr(performers.cli.finetune, "finetune", _record(calls, result))
    finetune = ["finetune", "--task", "gb1", "--train-limit", "4", "--test-limit", "2"]
    small = ["--d-model", "16", "--layers", "1", "--heads", "2", "--num-features", "8"]
    assert main([*finetune, *small, *compute, "--out", str(tmp_path / "f")]) == 0
    monkeypatch.setattr(performers.cli.diagnose, "run_diagnosis", _record(calls, "report"))
    monkeypatch.setattr(performers.cli.diagnose, "format_summary", str)
    assert main(["diagnose", "m", *compute]) == 0
    assert [call["device"] for call in calls] == [cpu] * 4
    assert torch.get_num_threads() == 2


def test_distill_and_convert_check_run_on_the_device(monkeypatch, tmp_path, capsys):
    transformers = pytest.importorskip("performers.integrations.transformers")
    import performers.jobs.distillation

    calls: list[dict] = []
    done = ({"steps": 1, "loss": 1.0, "seconds": 1.0}, "final")
    monkeypatch.setattr(performers.jobs.distillation, "distill_model", _record(calls, done))
    assert main(["distill", "m", "--threads", "2", "--device", "cpu", "--out", str(tmp_path / "s")]) == 0
    assert calls.pop()["device"] == torch.device("cpu") and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    saved = []
    model = SimpleNamespace(save_pretrained=saved.append)
    monkeypatch.setattr(transformers, "load_hf_model", lambda *a, **k: (model, None))
    monkeypatch.setattr(transformers, "performerize", lambda m, favor: m)
    monkeypatch.setattr(performers.cli.convert, "run_diagnosis", _record(calls, SimpleNamespace(heads=[])))
    monkeypatch.setattr(performers.cli.convert, "format_summary", lambda report: "summary")
    out = str(tmp_path / "c")
    assert main(["convert", "m", out, "--check", "--threads", "2", "--device", "cpu"]) == 0
    assert calls[0]["device"] == torch.device("cpu") and saved == [out]
    assert torch.get_num_threads() == 2


# ---- defaults in --help ----------------------------------------------------------------------


def test_every_help_shows_every_default():
    missing = []
    for path, parser in _walk(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if (
                not action.option_strings
                or action.help == argparse.SUPPRESS
                or action.default is None
                or action.default is argparse.SUPPRESS
                or isinstance(action.default, bool)  # a flag: off unless given
                or action.nargs == 0  # store_const and friends
            ):
                continue
            text = formatter._expand_help(action)
            if not re.search(r"default:? ", text):
                missing.append(f"{path} {action.option_strings[0]}: {text!r}")
    assert not missing, "options whose --help shows no default:\n" + "\n".join(missing)


def test_the_help_of_a_command_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 16)", "(default: 256)", "(default: 0.002)", "(default: 20)", "(default: 25)"):
        assert shown in text
    assert "max(--eval-every, --steps // 4)" in text  # --checkpoint-every's policy


# ---- --checkpoint-every ----------------------------------------------------------------------


def _steps(out: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step-")) for p in (out / "checkpoints").iterdir())


def test_checkpoint_every_sets_the_period_and_may_change_on_an_exact_resume(tmp_path, capsys):
    # A constant learning rate: a run of 2 steps extended to 4 computes what a run of 4 does.
    base = [*TINY_TRAIN, "--schedule", "constant", "--warmup", "0", "--dropout", "0.1"]
    assert main([*base, "--steps", "4", "--out", str(tmp_path / "whole")]) == 0
    assert _steps(tmp_path / "whole") == [2, 4]  # max(--eval-every 2, 4 // 4)
    split = ["--out", str(tmp_path / "split")]
    assert main([*base, "--steps", "2", "--checkpoint-every", "1", *split]) == 0
    assert _steps(tmp_path / "split") == [1, 2]
    assert main([*base, "--steps", "4", "--checkpoint-every", "3", *split, "--resume"]) == 0
    assert _steps(tmp_path / "split") == [2, 3, 4]  # 3 by the new period, 4 the last; 3 kept
    out = capsys.readouterr().out
    assert "resumed from" in out and "refused" not in out
    whole = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "split" / "final" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    metrics = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]


def test_checkpoint_every_is_checked_and_listed_among_what_resume_may_change(cli_error, tmp_path):
    cli_error(
        ["train", "--checkpoint-every", "0", "--out", str(tmp_path)], match="--checkpoint-every must be >= 1"
    )
    for name in ("train", "finetune", "distill"):
        parser = _commands(build_parser())[name]
        (resume,) = [a for a in parser._actions if a.dest == "resume"]
        assert "--checkpoint-every" in resume.help, name
    parser = build_parser()
    assert parser.parse_args(["distill", "m"]).checkpoint_every == 100
    assert parser.parse_args(["finetune", "--checkpoint-every", "7"]).checkpoint_every == 7


# ---- the FASTA cache -------------------------------------------------------------------------


def test_cache_dir_says_where_the_fasta_cache_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERFORMERS_CACHE", str(tmp_path / "env"))  # --cache-dir wins over it
    fasta = tmp_path / "p.fa"
    fasta.write_text("".join(f">p{i}\nMKVLAAGIVDLLA\n" for i in range(4)))
    argv = ["train", "--train", str(fasta), "--valid", str(fasta), "--cache-dir", str(tmp_path / "c")]
    args = build_parser().parse_args(argv)
    first = data_from_args(args)
    assert first.parent == tmp_path / "c" / "prepared" and not (tmp_path / "env").exists()
    assert f"cached the prepared dataset in {first}" in capsys.readouterr().out
    assert data_from_args(args) == first
    assert f"using the cached prepared dataset {first}" in capsys.readouterr().out


# ---- output paths checked first --------------------------------------------------------------


def _no_work(*args, **kwargs):
    raise AssertionError("the command started working before checking its output path")


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A file where an output directory would have to be."""
    path = tmp_path / "a-file"
    path.write_text("")
    return path


# (argv, where the work would start: (module, attribute) patched to fail loudly, expected error)
OUTPUTS = {
    "train": (["train", "--out", "{blocked}/run"], (performers.cli.train, "data_from_args")),
    "demo": (["demo", "--out", "{blocked}/run"], (performers.cli.demo, "data_from_args")),
    "finetune": (["finetune", "--out", "{blocked}/run"], (performers.cli.finetune, "labelled_splits")),
    "distill": (
        ["distill", "m", "--out", "{blocked}/run"],
        (performers.cli.distill, "favor_config_from_args"),
    ),
    "diagnose": (["diagnose", "m", "--out", "{blocked}/d"], (performers.cli.diagnose, "run_diagnosis")),
    "prepare": (["prepare", "{fasta}", "--out", "{blocked}/p"], (performers.cli.prepare, "prepare")),
    "convert": (["convert", "m", "{blocked}/c"], (performers.cli.convert, "favor_config_from_args")),
    "evaluate": (
        ["evaluate", "{mlm}", "--per-sequence", "{tmp}/no/r.csv"],
        (performers.cli.evaluate, "load_trained"),
    ),
    "embed": (["embed", "{mlm}", "{fasta}", "--out", "{tmp}/no/e.npz"], (performers.cli.embed, "load_model")),
    "score": (["score", "{mlm}", "{fasta}", "--out", "{tmp}/no/s.csv"], (performers.cli.score, "load_model")),
    "predict": (
        ["predict", "{mlm}", "{fasta}", "--out", "{tmp}/no/p.csv"],
        (performers.cli.predict, "load_protein_model"),
    ),
}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(
    name, blocked, mlm_dir, fasta, tmp_path, monkeypatch, cli_error
):
    argv, (module, attribute) = OUTPUTS[name]
    monkeypatch.setattr(module, attribute, _no_work)
    values = {"blocked": blocked, "mlm": mlm_dir, "fasta": fasta, "tmp": tmp_path}
    argv = [a.format(**values) for a in argv]
    option = "OUT" if name == "convert" else ("--per-sequence" if name == "evaluate" else "--out")
    if "{blocked}" in " ".join(OUTPUTS[name][0]):
        expected = rf"error: {option} {re.escape(str(blocked))}/\w+: cannot be made: .*a-file is a file"
    else:
        expected = rf"error: {option} {re.escape(str(tmp_path))}/no/\S+: no such directory"
    cli_error(argv, match=expected)


def test_output_files_and_directories_are_told_apart(tmp_path, mlm_dir, fasta, cli_error):
    cli_error(
        ["embed", str(mlm_dir), str(fasta), "--out", str(tmp_path)],  # a directory, not a file
        match="must end in .npz",
    )
    directory = tmp_path / "d.csv"
    directory.mkdir()
    cli_error(["score", str(mlm_dir), str(fasta), "--out", str(directory)], match="is a directory")
    a_file = tmp_path / "run"
    a_file.write_text("")
    cli_error(["train", "--out", str(a_file)], match=r"--out .*run: is a file, not a directory")
