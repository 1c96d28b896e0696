import json

import pytest

from performers.bench import esm_long
from performers.cli import main
from tests.helpers.results import assert_written_by_the_results_writer

TINY = esm_long.Shape("1x16x2", layers=1, width=16, heads=2)
BASE = esm_long.Spec(shape=TINY, attention="favor", length=0, num_features=8, threads=1, repeats=1)


def test_cli_measures_every_length_and_attention_and_writes_through_the_writer(tmp_path):
    out = tmp_path / "esm_long.json"
    args = ["bench", "esm-long", "--shapes", "1x16x2", "--lengths", "32", "16", "--num-features", "8"]
    args += ["--threads", "1", "--repeats", "1", "--in-process", "--out", str(out)]
    assert main(args) == 0
    record = assert_written_by_the_results_writer(out)
    got = {(p["spec"]["length"], p["spec"]["attention"]) for p in record["points"]}
    assert got == {(n, a) for n in (16, 32) for a in ("favor", "sdpa", "eager")}
    for p in record["points"]:
        assert p["error"] is None and p["skipped"] is None, p
        assert p["seconds"] > 0 and p["residues_per_s"] == pytest.approx(p["spec"]["length"] / p["seconds"])
        assert p["peak_extra_mib"] >= 0
    # The second length's prediction grows from the first: linearly for FAVOR+, quadratically else.
    by = {(p["spec"]["length"], p["spec"]["attention"]): p for p in record["points"]}
    for attention, growth in (("favor", 2), ("sdpa", 4), ("eager", 4)):
        expected = by[16, attention]["seconds"] * growth
        assert by[32, attention]["predicted_seconds"] == pytest.approx(expected)
    assert by[32, "eager"]["attention_matrix_gib"] == pytest.approx(2 * 34**2 * 4 / 2**30)
    report = out.with_suffix(".md").read_text()
    assert report.startswith("# ESM-shaped") and "--shapes 1x16x2" in report
    assert "| 32 | eager |" in report and "speed-up (sdpa s / FAVOR+ s)" in report
    assert "**not measured** — no FAVOR+ and no sdpa point" in report  # 32768 was not asked for
    assert record["settings"]["num_features"] == 8 and record["settings"]["in_process"] is True
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_points_predicted_over_the_time_or_memory_budget_are_skipped_not_run(monkeypatch):
    ran = []

    def fake_point(spec):  # a measured point whose time is known exactly
        ran.append((spec.attention, spec.length))
        return esm_long.Point(
            spec, seconds=spec.length / 16, residues_per_s=16.0, peak_extra_mib=1.0, first_call_s=1.0
        )

    monkeypatch.setattr(esm_long, "run_point", fake_point)
    # eager's matrix at 16 residues: 2 heads x 18² x 4 B = 2,592 B; at 32: 9,248 B.
    budget = 4096 / 2**30
    points = esm_long.measure(
        [TINY],
        ["favor", "eager"],
        [16, 32, 64],
        base=BASE,
        max_seconds=2.5,  # favor: 1 s, then predicted 2 s (run), then 4 s (skipped)
        max_memory_gib=budget,
        in_process=True,
        log=lambda _: None,
    )
    assert ran == [("favor", 16), ("favor", 32), ("eager", 16)]
    notes = {(p.spec.attention, p.spec.length): p.skipped for p in points}
    assert notes["favor", 64] == "skipped: predicted 4 s > 2.5 s"
    assert (
        notes["eager", 32].startswith("skipped: predicted attention matrix")
        and "GiB > budget" in notes["eager", 32]
    )
    assert notes["eager", 64].startswith("skipped: predicted attention matrix")
    assert [p.seconds for p in points if p.skipped] == [None] * 3


def test_an_error_skips_the_longer_lengths_of_that_attention(monkeypatch):
    def failing(spec, timeout):
        return esm_long.Point(spec, error="timeout after 1s")

    monkeypatch.setattr(esm_long, "_in_subprocess", failing)
    points = esm_long.measure(
        [TINY], ["sdpa"], [16, 32], base=BASE, max_seconds=10, max_memory_gib=1, log=lambda _: None
    )
    assert [(p.error, p.skipped) for p in points] == [
        ("timeout after 1s", None),
        (None, "skipped: failed at 16 residues"),
    ]


def test_a_point_in_a_worker_process_comes_back_whole(monkeypatch, capsys):
    """The worker's JSON line becomes the point (run here: a fresh interpreter costs ~10 s)."""

    def run_here(argv, threads, timeout, *, module):
        assert module == "performers.bench.esm_long" and argv[0] == "--worker"
        assert esm_long._worker(argv[1]) == 0
        return capsys.readouterr().out, 123.0

    monkeypatch.setattr(esm_long, "run_command", run_here)
    spec = esm_long.Spec(shape=TINY, attention="sdpa", length=16, num_features=8, threads=1, repeats=2)
    point = esm_long._in_subprocess(spec, timeout=60)
    assert point.spec == spec and point.error is None and point.peak_rss_mib == 123.0
    assert point.seconds > 0 and point.first_call_s > 0 and point.peak_extra_mib >= 0


def _point(attention, length, seconds, peak):
    return esm_long.Point(
        esm_long.Spec(shape=esm_long.SHAPES["8M"], attention=attention, length=length),
        seconds=seconds,
        peak_extra_mib=peak,
    )


@pytest.mark.parametrize(
    ("favor", "sdpa", "verdict"),
    [
        (
            (2.0, 100.0),
            (10.0, 100.0),
            "**met** — 2 s vs 10 s (5.0×, ≥ 5×); peak 100 MiB vs 100 MiB (no more)",
        ),
        ((2.0, 100.0), (9.0, 200.0), "**missed** — 2 s vs 9 s (4.5×, < 5×)"),
        (
            (1.0, 300.0),
            (80.0, 200.0),
            "**missed** — 1 s vs 80 s (80.0×, ≥ 5×); peak 300 MiB vs 200 MiB (more)",
        ),
    ],
)
def test_the_target_is_met_only_with_the_speed_up_and_no_more_memory(favor, sdpa, verdict):
    n = esm_long.TARGET_LENGTH
    points = [_point("favor", n, *favor), _point("sdpa", n, *sdpa)]
    assert verdict in esm_long.target_verdict(points, esm_long.SHAPES["8M"])


def test_the_target_says_why_it_was_not_measured():
    n = esm_long.TARGET_LENGTH
    skipped = esm_long.Point(
        esm_long.Spec(shape=esm_long.SHAPES["8M"], attention="sdpa", length=n),
        skipped="skipped: predicted 900 s > 600 s",
    )
    text = esm_long.target_verdict([_point("favor", n, 1.0, 10.0), skipped], esm_long.SHAPES["8M"])
    assert "**not measured** — no sdpa point (sdpa: skipped: predicted 900 s > 600 s)" in text


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--shapes", "9M"],
            "--shapes: unknown shape '9M'; give 8M, 35M or LAYERSxWIDTHxHEADS (e.g. 2x16x2)",
        ),
        (["--shapes", "2x30x4"], "--shapes: '2x30x4' needs layers, width and heads >= 1 with heads dividing"),
        (["--lengths", "0"], "--lengths must be >= 1, got 0"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--max-seconds", "0"], "--max-seconds must be > 0, got 0"),
        (["--max-memory-gib", "-1"], "--max-memory-gib must be > 0, got -1"),
        (["--num-features", "0"], "--num-features: FavorConfig.num_features: kernel 'softmax' needs random"),
        (["--attention", "flash"], "argument --attention: invalid choice: 'flash'"),
    ],
)
def test_a_bad_option_is_one_error_line(option, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    try:
        status = main(["bench", "esm-long", *option, "--out", str(out)])
    except SystemExit as exit:  # argparse's own checks (a choice) exit from the parser
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"performers bench esm-long: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_point_spec_round_trips_through_the_workers_json():
    spec = esm_long.Spec(shape=esm_long.SHAPES["35M"], attention="eager", length=2048, num_features=64)
    assert esm_long._spec_from_json(json.loads(json.dumps(esm_long.asdict(spec)))) == spec
