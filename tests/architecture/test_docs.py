"""The documentation runs as written: README.md and every guide under docs/ (docs/results is
generated and not checked here).

* Every ```python block runs, each in a fresh namespace.
* Every ```bash block of a page runs, in order, in one temporary directory holding small input
  files: each line is a ``performers`` command, run through :func:`performers.cli.main` with tiny
  sizes appended (:data:`TINY`; later options win), and must succeed and say what it wrote.
* A block that cannot run here (a GPU, several processes, minutes of training, installing
  packages) carries the marker ``<!-- docs-test: skip: REASON -->`` on the line before it: the
  test of that block is reported as skipped with its reason (``pytest -ra`` lists them).
* The README stays a front door: at most 250 lines, its command table lists every command and
  benchmark of ``performers --help``, and its relative links point at files that exist.
"""

from __future__ import annotations

import gzip
import re
import shlex
from pathlib import Path

import pytest

from performers.cli import main
from performers.jobs import find_mutations, format_mutations
from performers.proteins import default_corpus, read_fasta
from performers.utils import shipped_data

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUIDES = sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] != "results")
PAGES = [README, *GUIDES]

# A fenced block, with the marker on the line before it when there is one.
BLOCK = re.compile(
    r"^(?:<!-- docs-test: (?P<mode>skip|run): (?P<reason>.+?) -->\n)?```(?P<lang>[\w-]*)\n(?P<code>.*?)^```$",
    flags=re.S | re.M,
)
LANGUAGES = {"python", "bash", "text"}

# Appended to the documented commands (later options win): tiny sizes and budgets for a test.
TINY = {
    "train": "--steps 3 --batch-size 4 --max-length 64 --d-model 16 --layers 1 --heads 2 --d-ff 32 "
    "--num-features 8 --eval-every 3 --threads 1 --workers 0",
    "finetune": "--steps 2 --batch-size 4 --max-length 64 --train-limit 8 --test-limit 4 --threads 1",
    "evaluate": "--max-length 64",
}

# Pages whose commands form a chain the tests must keep covering, and what it writes.
CHAINS = {
    "proteins.md": [
        *"prepare train evaluate embed embed".split(),
        *["score"] * 5,
        *"finetune finetune predict predict".split(),
    ],
}


def _blocks(page: Path) -> list[dict]:
    text = page.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        blocks.append({**match.groupdict(), "line": line, "page": page})
    return blocks


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


PYTHON = [b for page in PAGES for b in _blocks(page) if b["lang"] == "python"]


def test_pages_found():
    names = {_name(p) for p in PAGES}
    assert "README.md" in names and "docs/index.md" in names
    assert sum(name.startswith("docs/guides/") for name in names) >= 8
    assert len(PYTHON) >= 15


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_blocks_are_known(page):
    """Every fenced block names its language and only python/bash/text are used."""
    text = page.read_text()
    assert text.count("```") % 2 == 0, f"{_name(page)}: an unclosed code fence"
    for block in _blocks(page):
        assert block["lang"] in LANGUAGES, f"{_name(page)}:{block['line']}: fence language {block['lang']!r}"
        if block["mode"] is not None:
            where = f"{_name(page)}:{block['line']}"
            assert block["lang"] in ("python", "bash"), f"{where}: a marker on a {block['lang']} block"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: f"{_name(b['page'])}:{b['line']}")
def test_python_block_runs(block):
    if block["mode"] == "skip":
        pytest.skip(f"{_name(block['page'])}:{block['line']}: {block['reason']}")
    # Line numbers of a failure point into the page.
    code = "\n" * block["line"] + block["code"]
    exec(compile(code, str(block["page"]), "exec"), {"__name__": "docs_example"})


SKIPPED = [b for page in PAGES for b in _blocks(page) if b["mode"] == "skip" and b["lang"] == "bash"]


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: f"{_name(b['page'])}:{b['line']}")
def test_bash_block_skipped(block):
    """Bash blocks that cannot run here are listed among the skipped tests, with their reasons."""
    pytest.skip(f"{_name(block['page'])}:{block['line']}: {block['reason']}")


def _commands(page: Path) -> list[tuple[int, str]]:
    """The ``performers`` commands of the page's bash blocks that are not marked skip."""
    commands = []
    for block in _blocks(page):
        if block["lang"] != "bash" or block["mode"] == "skip":
            continue
        code = block["code"].replace("\\\n", " ")
        for offset, line in enumerate(code.splitlines()):
            words = shlex.split(line, comments=True)
            if not words:
                continue
            where = f"{_name(page)}:{block['line'] + offset + 1}"
            assert words[0] == "performers", (
                f"{where}: only performers commands run in the tests; mark the block "
                f"'<!-- docs-test: skip: REASON -->' if it cannot run here: {line!r}"
            )
            commands.append((block["line"] + offset + 1, line))
    return commands


BASH_PAGES = [p for p in PAGES if any(b["lang"] == "bash" and b["mode"] != "skip" for b in _blocks(p))]


def _inputs():
    """Small files the commands read: 40 short proteins, a wild type, 5 variants of it, and the
    same 5 as a ProteinGym-style DMS file (mutant,DMS_score)."""
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
    (wildtype,) = read_fasta("wildtype.fasta")
    rows = []
    for record in read_fasta("variants.fasta"):
        mutant = format_mutations(find_mutations(wildtype.sequence, record.sequence)) or "WT"
        rows.append(f"{mutant},{record.header.split('TARGET=')[1].split()[0]}\n")
    Path("assay.csv").write_text("mutant,DMS_score\n" + "".join(rows))


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # --help
        return exit.code or 0


@pytest.mark.parametrize("page", BASH_PAGES, ids=_name)
def test_commands_run(page, tmp_path, monkeypatch, capsys):
    commands = _commands(page)
    if page.name in CHAINS:
        assert [shlex.split(c)[1] for _, c in commands] == CHAINS[page.name]
    monkeypatch.chdir(tmp_path)
    _inputs()
    for line, command in commands:
        words = shlex.split(command, comments=True)[1:]
        where = f"{_name(page)}:{line}: {command}"
        if "--help" in words:
            assert _run(words) == 0, where
            assert capsys.readouterr().out.startswith("usage: performers"), where
            continue
        argv = words + shlex.split(TINY.get(words[0], ""))
        assert _run(argv) == 0, where
        for option in ("--per-sequence", "--out"):
            if option in argv:  # every command says what it wrote
                written = argv[argv.index(option) + 1]
                assert written in capsys.readouterr().out, where
                break
    if page.name == "proteins.md":
        assert len(list(read_fasta("proteins.fasta"))) == 40
        assert Path("runs/mine/per_protein.csv").read_text().count("\n") == 41
        assert Path("runs/mine/effects.csv").read_text().count("\n") == 6
        assert Path("runs/mine/dms.csv").read_text().count("\n") == 6
        assert "spearman" in Path("runs/mine/dms.spearman.json").read_text()
        assert Path("runs/mine-ss/predictions.csv").read_text().count("\n") == 41
        assert '"q3"' in Path("runs/mine-ss/results.json").read_text()
        assert "BLOSUM62" in Path("runs/mine/results.json").read_text()  # the baseline beside it
        assert Path("runs/mine/mutants.csv").read_text().count("\n") == 3
        assert Path("runs/mine/scan.csv").read_text().count("\n") == 1 + 16 * 19
        assert Path("runs/mine/scan.png").read_bytes()[:4] == b"\x89PNG"


def _listed(argv: list[str], capsys) -> list[str]:
    """The subcommands that ``performers ARGV --help`` lists."""
    assert _run([*argv, "--help"]) == 0
    help_text = capsys.readouterr().out
    section = help_text.split("positional arguments:")[1].split("options:")[0]
    return re.findall(r"^    ([a-z][\w-]*)", section, flags=re.M)


def test_readme_is_a_front_door(capsys):
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    commands = _listed([], capsys)
    benches = _listed(["bench"], capsys)
    assert "train" in commands and "speed" in benches
    table = set(re.findall(r"^\| `performers ([\w -]+?)` \|", text, flags=re.M))
    expected = {c for c in commands if c != "bench"} | {f"bench {b}" for b in benches}
    assert expected <= table, f"commands missing from the README's table: {sorted(expected - table)}"
    assert table <= expected, f"the README's table lists unknown commands: {sorted(table - expected)}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_exist(page):
    """Links into the repository resolve (the docs site build checks its own; this also covers the
    README, read on the repository host)."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{_name(page)}: link to a missing file: {target}"
