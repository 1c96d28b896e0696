"""Training, evaluation and the protein commands on a prepared dataset and on user FASTA files."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from performers.cli import main
from performers.proteins import default_corpus
from performers.proteins.prepared import prepare
from performers.utils import load_safetensors
from tests.cli.test_proteins import TINY


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The shipped corpus, prepared (same records, same order, same splits)."""
    out = tmp_path_factory.mktemp("prepared") / "refseq"
    prepare([default_corpus()], out, log=None)
    return out


def _weights(run: Path) -> dict:
    return load_safetensors(run / "final" / "model.safetensors")[0]


@pytest.mark.parametrize("extra", [[], ["--concatenate", "--task", "clm"]])
def test_training_on_the_prepared_corpus_equals_training_on_the_fasta(tmp_path, corpus, extra, capsys):
    """Same examples, crops, masks, windows and evaluation: bit-identical models and metrics."""
    args = [*TINY, *extra, "--workers", "0"]
    assert main(["train", *args, "--out", str(tmp_path / "fasta")]) == 0
    from_fasta = capsys.readouterr().out.splitlines()[-1]
    assert (
        main(["train", *args, "--data", str(corpus), "--workers", "2", "--out", str(tmp_path / "prepared")])
        == 0
    )
    from_prepared = capsys.readouterr().out.splitlines()[-1]
    one, two = _weights(tmp_path / "fasta"), _weights(tmp_path / "prepared")
    assert all(torch.equal(one[k], two[k]) for k in one)
    metrics = r"test accuracy [0-9.]+%, perplexity [0-9.]+"  # (the speed that follows differs)
    assert re.match(metrics, from_fasta).group() == re.match(metrics, from_prepared).group()


def test_train_on_fasta_files_prepares_a_cache_once_and_evaluates_per_protein(
    tmp_path, monkeypatch, capsys, cli_error
):
    monkeypatch.setenv("PERFORMERS_CACHE", str(tmp_path / "cache"))
    records = []
    with open(tmp_path / "all.fasta", "w") as handle:
        for i, seq in enumerate(["MKVLAAGIVDLLA" * 3, "ACDEFGHIKLMNPQRSTVWY", "MMMKKKLLL" * 5] * 8):
            handle.write(f">prot{i}\n{seq}\n")
            records.append((f"prot{i}", seq))
    train, valid = tmp_path / "all.fasta", tmp_path / "valid.fasta"
    shutil.copy(train, valid)
    limits = {"--train-limit", "--test-limit"}
    small = [a for i, a in enumerate(TINY) if a not in limits and TINY[i - 1] not in limits]
    args = ["train", *small, "--train", str(train), "--valid", str(valid), "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no test split: evaluating on the validation records" in out
    (cached,) = (tmp_path / "cache" / "prepared").iterdir()
    assert f"cached the prepared dataset in {cached}" in out  # the command says where
    manifest = json.loads((cached / "manifest.json").read_text())
    assert manifest["splits"]["train"]["records"] == 24
    assert main([*args[:-1], str(tmp_path / "again")]) == 0
    assert f"using the cached prepared dataset {cached}" in capsys.readouterr().out
    # evaluate on any FASTA, with one row per protein
    table = tmp_path / "rows.csv"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--data",
                str(valid),
                "--max-length",
                "32",
                "--per-sequence",
                str(table),
            ]
        )
        == 0
    )
    assert "of 24 proteins" in capsys.readouterr().out
    rows = list(csv.DictReader(table.open()))
    assert [r["id"] for r in rows] == [name for name, _ in records]
    assert {"length", "tokens", "loss", "perplexity", "accuracy"} <= set(rows[0])
    assert int(rows[1]["length"]) == 20  # residues, not tokens
    cli_error(["train", *small, "--data", str(tmp_path)], match="not a prepared dataset")
    cli_error(["train", *small, "--train", str(train)], match="are both needed")


# Multi-process (make test-slow, which CI runs): make test stays within its 10 minutes.
@pytest.mark.slow
def test_two_process_ddp_on_a_prepared_dataset_equals_one_process(tmp_path, corpus):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    args = [*TINY, "--task", "mlm", "--dropout", "0", "--threads", "1", "--data", str(corpus)]
    one = subprocess.run([sys.executable, "-m", "performers", "train", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "performers",
            "train",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in a:
        # Same global batches, crops and masks; only the order of float sums differs.
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
