import json
from pathlib import Path

import pytest

from performers.cli import main

TINY = [
    "--steps",
    "4",
    "--batch-size",
    "4",
    "--max-length",
    "32",
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
    "--d-ff",
    "32",
    "--num-features",
    "8",
    "--eval-every",
    "2",
    "--train-limit",
    "64",
    "--test-limit",
    "16",
    "--threads",
    "1",
]
# A two-step causal `performers train` on the same tiny sizes (later options win).
TINY_TRAIN = ["train", "--task", "clm", *TINY, "--steps", "2", "--train-limit", "16", "--test-limit", "4"]
TINY_TRAIN += ["--workers", "0"]


def test_demo_trains_both_twins_and_writes_the_report(tmp_path, capsys):
    assert main(["demo", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Performer (FAVOR+)" in out and "Transformer (exact)" in out and "empirical baseline" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["Performer (FAVOR+)", "Transformer (exact)"]
    for run in report["runs"]:
        assert 0 <= run["test"]["accuracy"] <= 1 and run["tokens_per_second"] > 0
    assert (tmp_path / "favor" / "final" / "model.safetensors").exists()
    assert (tmp_path / "favor" / "final" / "tokenizer.json").exists()


def test_train_and_resume_from_the_cli(tmp_path, capsys):
    args = ["train", *TINY, "--task", "clm", "--out", str(tmp_path)]
    assert main(args) == 0
    assert main([*args, "--steps", "6", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_evaluate_and_generate_a_trained_model(tmp_path, capsys):
    assert main(["train", *TINY, "--task", "clm", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (
        main(["evaluate", str(tmp_path), "--limit", "8", "--max-length", "32", "--attention", "exact"]) == 0
    )
    assert "test: accuracy" in capsys.readouterr().out
    assert main(["generate", str(tmp_path), "MKV", "ACDEF", "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("MKV") and lines[1].startswith("ACDEF")


def test_finetune_secondary_structure_from_pretrained_and_random(tmp_path, capsys):
    assert main(["demo", *TINY, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    small = [
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--train-limit",
        "16",
        "--test-limit",
        "4",
    ]
    out = ["--out", str(tmp_path / "finetune")]
    assert main(["finetune", "--pretrained", str(tmp_path / "favor"), *small, *out]) == 0
    printed = capsys.readouterr().out
    assert "test Q3" in printed and "(majority class" in printed and "final" in printed
    assert (tmp_path / "finetune" / "final" / "head.safetensors").is_file()
    random_init = ["--d-model", "16", "--layers", "1", "--heads", "2", "--num-features", "8"]
    out = ["--out", str(tmp_path / "finetune-random")]  # a fresh run never lands on another's files
    assert main(["finetune", *small, *random_init, *out]) == 0
    assert "random initialization: test Q3" in capsys.readouterr().out


def test_finetune_random_init_control_has_the_pretrained_architecture_and_fresh_weights(
    tmp_path, capsys, monkeypatch
):
    import torch

    import performers.cli.finetune as command
    from performers.models import from_pretrained

    assert main(["train", *TINY, "--out", str(tmp_path)]) == 0
    seen = []
    from performers.jobs.results_file import Metric

    result = {"metrics": {"q3": Metric(0.5, 0.4, "majority class 'C' of the training split", True, 1)}}
    monkeypatch.setattr(command, "finetune", lambda encoder, *_, **__: seen.append(encoder) or result)
    for extra in ([], ["--random-init"]):
        assert main(["finetune", "--pretrained", str(tmp_path), "--steps", "1", *extra]) == 0
    pretrained = from_pretrained(tmp_path / "final").model
    loaded, control = seen
    assert control.config == loaded.config == pretrained.config
    weight = "embed_tokens.weight"
    assert torch.equal(loaded.state_dict()[weight], pretrained.state_dict()[weight])
    assert not torch.equal(control.state_dict()[weight], pretrained.state_dict()[weight])
    assert "random initialization (architecture of" in capsys.readouterr().out


def test_config_file_sets_options_and_the_command_line_wins(tmp_path, capsys, cli_error):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"steps": 2, "d_model": 16, "task": "clm", "out": str(tmp_path / "a")}))
    assert main(["train", *TINY, "--config", str(config)]) == 0  # TINY says --steps 4 and --d-model 16
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    config.write_text(json.dumps({"stepz": 2}))
    assert "unknown option(s) stepz" in cli_error(["train", "--config", str(config)])


@pytest.mark.slow  # three multi-process performers train runs (make test-slow)
def test_two_processes_data_or_context_parallel_match_one_process_with_the_same_global_batch(tmp_path):
    import shutil
    import subprocess
    import sys

    import torch

    from performers.utils import load_safetensors

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    args = [*TINY, "--task", "mlm", "--dropout", "0", "--threads", "1"]
    env_python = [sys.executable, "-m", "performers", "train"]
    single = subprocess.run(
        [*env_python, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-2000:]
    one, _ = load_safetensors(tmp_path / "one" / "final" / "model.safetensors")
    # Data parallel (each process half of every batch), then context parallel (each process
    # half of every sequence).
    for name, extra in (("ddp", []), ("context", ["--context-parallel", "2"])):
        two = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node=2", "-m", "performers", "train", *args, *extra,
             "--out", str(tmp_path / name)],
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert two.returncode == 0, two.stderr[-2000:]
        weights, _ = load_safetensors(tmp_path / name / "final" / "model.safetensors")
        assert one.keys() == weights.keys()
        for key in one:
            # Same global batches, crops and masks; only the order of float sums differs.
            torch.testing.assert_close(weights[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
        assert (tmp_path / name / "metrics.jsonl").read_text().count("\n") == 4  # rank 0 logs once per step


def test_context_parallel_options_are_checked(capsys, cli_error):
    cli_error(
        ["train", *TINY, "--context-parallel", "2"],
        match=r"--context-parallel 2 must divide the number of processes \(1\)",
    )
    cli_error(
        ["train", *TINY, "--context-parallel", "2", "--attention", "exact"],
        match=r"--context-parallel needs FAVOR\+ attention",
    )


def test_every_option_of_every_command_has_help():
    import argparse

    from performers.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            elif action.option_strings and action.dest != "help":
                yield path, action

    missing = [
        f"{path} {a.option_strings[0]}" for path, a in walk(build_parser(), "performers") if not a.help
    ]
    assert not missing, f"options without --help text: {missing}"


def test_finetune_on_your_own_labelled_fasta_and_on_gb1(tmp_path, capsys, cli_error):
    sequences = tmp_path / "s.fasta"
    labels = tmp_path / "l.fasta"
    records = [(f"p{i}", "MKVACDEFGHIK"[: 6 + i % 6]) for i in range(12)]
    sequences.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    split = {0: "SET=test", 1: "SET=train VALIDATION=True"}
    lines = []
    for i, (name, seq) in enumerate(records):
        lines.append(f">{name} {split.get(i % 4, 'SET=train')}\n{('ab' * 6)[: len(seq)]}\n")
    labels.write_text("".join(lines))
    small = [
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--max-length",
        "16",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
    ]
    args = ["finetune", "--sequences", str(sequences), "--labels", str(labels), *small, "--num-features", "8"]
    assert main([*args, "--out", str(tmp_path / "own")]) == 0
    assert "ResidueLabels (6 train)" in capsys.readouterr().out
    # A stopped run (e.g. by SIGTERM) continues where its checkpoint is.
    assert main([*args, "--steps", "3", "--out", str(tmp_path / "own"), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    metrics = (tmp_path / "own" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3]
    gb1 = [
        "finetune",
        "--task",
        "gb1",
        "--train-limit",
        "8",
        "--test-limit",
        "4",
        *small[:4],
        "--max-length",
        "272",
    ]
    assert (
        main(
            [
                *gb1,
                "--d-model",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--num-features",
                "8",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    assert "test Spearman" in capsys.readouterr().out
    cli_error(["finetune", "--task", "gb1", "--targets", str(labels)], match="choose one of")
