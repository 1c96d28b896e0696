"""The README's code runs as written: its Python blocks, and its protein commands on small files."""

import gzip
import re
import shlex
from pathlib import Path

from performers.cli import main
from performers.proteins import default_corpus, read_fasta
from performers.utils import shipped_data

README = Path(__file__).resolve().parents[1] / "README.md"

# Appended to the README's commands (later options win): tiny sizes and budgets for a test.
TINY = {
    "train": "--steps 3 --batch-size 4 --max-length 64 --d-model 16 --layers 1 --heads 2 --d-ff 32 "
    "--num-features 8 --eval-every 3 --threads 1 --workers 0",
    "finetune": "--steps 2 --batch-size 4 --max-length 64 --train-limit 8 --test-limit 4 --threads 1",
    "evaluate": "--max-length 64",
}


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_protein_commands_run(tmp_path, monkeypatch, capsys):
    block = re.search(r"<!-- readme-commands -->\n```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.startswith("performers ")]
    assert [c.split()[1] for c in commands] == [
        "prepare",
        "train",
        "evaluate",
        "embed",
        "score",
        "score",
        "finetune",
    ]
    monkeypatch.chdir(tmp_path)
    records = []
    for record in read_fasta(default_corpus()):
        if len(record.sequence) < 120:
            records.append(record)
        if len(records) == 40:
            break
    Path("proteins.fasta").write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
    Path("wildtype.fasta").write_text(shipped_data("proteins", "flip_gb1", "wildtype.fasta").read_text())
    with gzip.open(shipped_data("proteins", "flip_gb1", "sampled.fasta.gz"), "rt") as handle:
        variants = handle.read().split(">")[1:6]
    Path("variants.fasta").write_text("".join(">" + v for v in variants))
    for command in commands:
        argv = shlex.split(command)[1:] + shlex.split(TINY.get(command.split()[1], ""))
        assert main(argv) == 0, command
        written = argv[argv.index("--per-sequence" if "--per-sequence" in argv else "--out") + 1]
        assert written in capsys.readouterr().out, command  # every command says what it wrote
    assert len(list(read_fasta("proteins.fasta"))) == 40
    assert Path("runs/mine/per_protein.csv").read_text().count("\n") == 41
    assert Path("runs/mine/effects.csv").read_text().count("\n") == 6
