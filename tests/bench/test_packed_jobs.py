"""``performers bench packed-jobs``: packed and padded runs of embed, score and evaluate,
interleaved, summarized and written through the results writer. The commands run in this
process here (``run_command`` replaced) to keep the test fast; ``run_command`` itself, the fresh
process, is ``performers bench embed-score``'s and tested there."""

import contextlib
import io

import pytest

from performers.bench import embed_score
from performers.bench.packed_jobs import TARGET, Run, sample_proteins, summarize
from performers.cli import main
from tests.helpers.results import assert_written_by_the_results_writer

LENGTHS = [3, 40, 1, 12, 25, 7, 60, 2]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.fasta"
    residues = "ACDEFGHIKLMNPQRSTVWY"
    path.write_text("".join(f">p{i} x\n{(residues * 4)[i : i + n]}\n" for i, n in enumerate(LENGTHS)))
    return path


def test_samples_are_seeded_and_nest(corpus):
    large = sample_proteins(6, seed=1, corpus=corpus)
    assert len({name for name, _ in large}) == 6 and large == sample_proteins(6, seed=1, corpus=corpus)
    assert sample_proteins(6, seed=2, corpus=corpus) != large
    with pytest.raises(ValueError, match="at most 8 proteins"):
        sample_proteins(9, seed=1, corpus=corpus)


def test_summary_takes_medians_and_states_the_target():
    runs = [
        Run("embed", 4, 40, True, 0, seconds=1.0),
        Run("embed", 4, 40, False, 0, seconds=2.0),
        Run("embed", 4, 40, True, 1, seconds=3.0),
        Run("embed", 4, 40, False, 1, seconds=3.0),
        Run("score", 4, 40, True, 0, error="boom"),
        Run("score", 4, 40, False, 0, seconds=1.0),
    ]
    embed, score = summarize(runs)
    assert embed["packed_seconds"] == 2.0 and embed["padded_seconds"] == 2.5
    assert embed["speedup"] == 1.25 and embed["target_met"] is (1.25 >= TARGET)
    assert embed["packed_proteins_per_s"] == 2.0
    assert score["speedup"] is None and score["error"] == "boom"


def test_tiny_packed_jobs_bench_times_packed_and_padded_through_the_writer(corpus, tmp_path, monkeypatch):
    calls = []

    def in_process(argv, threads, timeout, *, module="performers"):
        calls.append(argv)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(argv) == 0
        return out.getvalue(), 0.0

    monkeypatch.setattr(embed_score, "run_command", in_process)
    out = tmp_path / "packed_jobs.json"
    args = ["bench", "packed-jobs", "--sizes", "3", "6", "--d-model", "16", "--layers", "1", "--heads", "2"]
    args += ["--d-ff", "32", "--num-features", "8", "--batch-size", "2", "--corpus", str(corpus)]
    assert main([*args, "--out", str(out)]) == 0
    record = assert_written_by_the_results_writer(out)
    assert [(r["task"], r["proteins"]) for r in record["rows"]] == [
        (task, size) for size in (3, 6) for task in ("embed", "score", "evaluate")
    ]
    assert all(r["speedup"] is not None and r["error"] is None for r in record["rows"])
    # Every point ran packed and padded, the first of the pair alternating.
    flags = [argv[argv.index("--pack") if "--pack" in argv else argv.index("--no-pack")] for argv in calls]
    assert len(calls) == 12 and flags[:4] == ["--pack", "--no-pack", "--no-pack", "--pack"]
    assert {argv[0] for argv in calls} == {"embed", "score", "evaluate"}
    assert "| evaluate | 6 |" in out.with_suffix(".md").read_text()
