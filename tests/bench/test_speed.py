import json

import pytest
import torch

from performers.bench import speed, speed_report
from tests.helpers.results import assert_written_by_the_results_writer


@pytest.mark.parametrize(
    "method", ["favor", "favor-causal", "exact", "identity", "plain", "peer", "peer-causal", "model-favor"]
)
def test_run_point_in_process(method):
    if method.startswith("peer"):
        pytest.importorskip("performer_pytorch", reason="the peer is an optional [bench] dependency")
    spec = speed.Spec(method=method, length=64, heads=2, dim=8, num_features=16, repeats=1, threads=1)
    if method.startswith("model-"):
        spec.heads, spec.dim = 8, 64  # the model's own size; L stays tiny
    point = speed.run_point(spec)
    assert point.error is None
    assert point.forward_s > 0 and point.forward_backward_s > 0
    if method in ("favor", "plain"):
        assert point.floor_forward_s > 0


@pytest.mark.slow
def test_memory_point_in_subprocess_and_report(tmp_path):
    base = speed.Spec(method="favor", length=0, heads=2, dim=8, num_features=16, repeats=1, threads=1)
    points = speed.measure(["favor", "exact"], [64, 128], base=base, log=lambda _: None)
    assert [p.error for p in points] == [None] * 4
    assert all(p.peak_extra_mib is not None and p.peak_extra_mib >= 0 for p in points)
    text = speed_report.markdown(points, peak=100.0, command="performers bench speed --test")
    assert "| 128 |" in text and "primitive floor" in text and "Crossover" in text


def test_crossover_is_the_start_of_the_final_winning_run():
    def point(method, length, t):
        return speed.Point(speed.Spec(method=method, length=length), forward_backward_s=t)

    points = [point("favor", 1, 2.0), point("exact", 1, 1.0), point("favor", 2, 1.0), point("exact", 2, 2.0)]
    points += [point("favor", 4, 3.0), point("exact", 4, 2.0), point("favor", 8, 1.0), point("exact", 8, 5.0)]
    assert speed_report.crossover(points, "favor", "exact") == 8
    assert speed_report.crossover(points[:4], "favor", "exact") == 2


@pytest.mark.slow
def test_main_writes_json_markdown(tmp_path):
    from performers.cli import main

    out = tmp_path / "speed"
    rc = main(
        [
            "bench",
            "speed",
            "--methods",
            "favor",
            "identity",
            "--lengths",
            "32",
            "--heads",
            "1",
            "--dim",
            "8",
            "--num-features",
            "8",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--peak-size",
            "128",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    data = assert_written_by_the_results_writer(out / "speed.json")
    assert {p["spec"]["method"] for p in data["points"]} == {"favor", "identity"}


def test_the_speed_command_is_one_parser_with_its_options(capsys):
    """`bench speed` is parsed by the CLI's one parser (it used to be a stub without options)."""
    from performers.cli import build_parser

    argv = ["bench", "speed", "--lengths", "32", "--kernel", "relu", "--num-features", "0"]
    args = build_parser().parse_args(argv)
    assert args.lengths == [32] and args.kernel == "relu" and args.num_features is None
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "speed", "--help"])
    assert exit_info.value.code == 0
    assert "--max-seconds" in capsys.readouterr().out


@pytest.mark.slow
def test_autocast_points_run_bf16_and_merge_as_their_own_columns(tmp_path, capsys):
    from performers.cli import main

    out = tmp_path / "speed"
    common = ["bench", "speed", "--methods", "favor", "exact", "--lengths", "32", "--heads", "1"]
    common += ["--dim", "8", "--num-features", "8", "--repeats", "1", "--threads", "1", "--out", str(out)]
    common += ["--peak-size", "128"]  # bfloat16 GEMMs at 2048 take a minute on CPUs without bf16 units
    assert main(common) == 0
    assert main([*common, "--autocast", "--merge"]) == 0
    assert main([*common, "--dtype", "bfloat16", "--merge"]) == 0
    data = json.loads((out / "speed.json").read_text())
    kinds = {(p["spec"]["method"], p["spec"]["dtype"], p["spec"]["autocast"]) for p in data["points"]}
    assert kinds == {
        (m, d, a)
        for m in ("favor", "exact")
        for d, a in (("float32", False), ("float32", True), ("bfloat16", False))
    }
    text = (out / "speed.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| L | favor"))
    assert "favor (autocast bfloat16)" in header and "exact (bfloat16)" in header
    assert "`favor (bfloat16)`" in text or "not faster" in text  # a crossover line per precision
    assert main([*common, "--autocast", "--dtype", "bfloat16"]) == 2  # a user error: one line, status 2
    error = capsys.readouterr().err
    assert error == "performers bench speed: error: --autocast needs --dtype float32, got bfloat16\n"


def test_run_point_under_autocast_computes_in_bf16():
    spec = speed.Spec(
        method="favor", length=64, heads=2, dim=8, num_features=16, repeats=1, threads=1, autocast=True
    )
    fn = speed._build(spec, torch.Generator().manual_seed(0))
    q, k, v = speed._inputs(spec, torch.Generator().manual_seed(0), requires_grad=False)
    with speed._autocast(spec):
        assert fn(q, k, v).dtype == torch.bfloat16
    assert speed.run_point(spec).error is None
