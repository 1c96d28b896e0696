"""The GPU suite's code path on CPU with tiny sizes (the suite itself needs a GPU): every
section is measured or says why not, and the reports are written."""

import json

import pytest

from performers.bench.gpu import run_gpu_suite
from performers.bench.gpu_report import targets
from tests.helpers.results import assert_written_by_the_results_writer


@pytest.mark.slow
def test_gpu_suite_runs_on_cpu_and_writes_reports(tmp_path):
    results = run_gpu_suite(
        tmp_path,
        device="cpu",
        lengths=[32],
        dims=[16],
        features=[16],
        methods=["favor-torch", "sdpa", "fla-chunk"],
        dtype="float32",
        repeats=1,
        decode_contexts=[32],
        decode_methods=["favor-torch", "sdpa-kv-cache"],
        training_lengths=[16],
        training_tokens=32,
        tests=None,
        wide_heads_length=None,
        profile_methods=["favor-torch", "fla-chunk"],
        profile_length=32,
        log=lambda *_: None,
    )
    saved = assert_written_by_the_results_writer(tmp_path / "gpu.json")
    assert saved["attention"] == json.loads(json.dumps(results["attention"]))
    by_method = {(p["spec"]["method"], p["spec"]["causal"]): p for p in saved["attention"]}
    for causal in (False, True):
        for method in ("favor-torch", "sdpa"):
            point = by_method[(method, causal)]
            assert point["forward_ms"] > 0 and point["forward_backward_ms"] > 0, point
    assert by_method[("fla-chunk", False)]["note"] == "FLA has no bidirectional linear attention"
    fla = by_method[("fla-chunk", True)]
    assert fla["note"] or fla["forward_ms"]  # measured where installed, else why not
    assert all(r["step_ms"] > 0 for r in saved["decode"])
    assert {r["attention"] for r in saved["training"]} == {"favor", "exact"}
    assert all(r["tokens_per_s"] > 0 for r in saved["training"])
    # The profile: one forward+backward call per direction, its heaviest entries by self time.
    profiles = {(r["method"], r["causal"]): r for r in saved["profile"]}
    assert set(profiles) == {(m, c) for m in ("favor-torch", "fla-chunk") for c in (False, True)}
    for causal in (False, True):
        kernels = profiles[("favor-torch", causal)]["kernels"]
        assert 0 < len(kernels) <= 10 and all(k["ms"] > 0 and k["calls"] >= 1 for k in kernels)
        assert [k["ms"] for k in kernels] == sorted((k["ms"] for k in kernels), reverse=True)
        assert 0 < sum(k["share"] for k in kernels) <= 1 + 1e-9
    assert profiles[("fla-chunk", False)]["note"] == "FLA has no bidirectional linear attention"
    report = (tmp_path / "gpu.md").read_text()
    assert "**favor-torch, causal, L = 32, H = 8, D = 16, M = 16**" in report
    assert "| kernel | calls | ms | share |" in report
    assert "| causal | 32 | 8 | 16 | 16 | favor-torch |" in report
    assert (tmp_path / "gpu.png").stat().st_size > 0


def test_the_targets_points_come_first_and_partial_results_are_written(tmp_path):
    seen = []

    def log(line):
        seen.append(line)
        if line.startswith("decode"):  # the file already holds the attention points measured so far
            saved = json.loads((tmp_path / "gpu.json").read_text())
            assert saved["complete"] is False and saved["attention"]

    results = run_gpu_suite(
        tmp_path, device="cpu", lengths=[32, 16384], dims=[64], features=[256],
        methods=["favor-torch", "sdpa"], dtype="float32", repeats=1, decode_contexts=[32],
        decode_methods=["favor-torch"], training_lengths=[], tests=None, wide_heads_length=None,
        budget_s=0.0, log=log,
    )  # fmt: skip
    # With the budget spent at once every point is skipped, in order of importance: the L = 16k
    # points of the target configuration first.
    assert [p["spec"]["length"] for p in results["attention"]][:4] == [16384] * 4
    assert all(p["note"] == "skipped: time budget spent" for p in results["attention"])
    assert json.loads((tmp_path / "gpu.json").read_text())["complete"] is True
    assert (
        "| decode step time flat from 1k to 128k of context (within 1.2×) | — | not measured |"
        in (tmp_path / "gpu.md").read_text()
    )


def _point(method, causal, length, ms, peak=None, features=256):
    spec = {"method": method, "causal": causal, "length": length, "heads": 8, "dim": 64, "features": features}
    return {"spec": spec, "forward_ms": ms / 3, "forward_backward_ms": ms, "peak_mib": peak, "note": None}


def test_targets_are_judged_from_the_measured_points():
    results = {
        "attention": [
            _point("favor-triton", False, 16384, 10.0, peak=100.0),
            _point("favor-triton", False, 131072, 90.0, peak=900.0),  # 1.125× per position: linear
            _point("favor-triton", True, 16384, 20.0, peak=100.0),
            _point("favor-triton", True, 131072, 200.0, peak=2000.0),  # 2.5× per position: not linear
            _point("sdpa", False, 16384, 25.0, features=128),  # 2.5×: missed
            _point("fla-chunk", True, 16384, 15.0),  # ours 1.33× (causal): met; bidir 0.67×: met
            _point("performer-pytorch", True, 16384, 300.0),  # 15×: met
        ],
        "decode": [
            {"context": 1024, "method": "favor-triton", "step_ms": 0.10},
            {"context": 131072, "method": "favor-triton", "step_ms": 0.11},
        ],
    }
    judged = [(t["target"].split(" (")[0], t["value"], t["status"]) for t in targets(results)]
    per_position = "× the MiB per position of 16k at 131,072"
    assert judged == [
        ("bidirectional 16k: ≥ 3× faster than SDPA-flash", "2.50× faster", "missed"),
        ("bidirectional 16k: within 1.5× of FLA chunk_linear_attn, K = 256", "0.67× the time", "met"),
        ("causal 16k: within 1.5× of FLA chunk_linear_attn, K = 256", "1.33× the time", "met"),
        ("bidirectional 16k: ≥ 10× faster than performer-pytorch", None, "not measured"),
        ("causal 16k: ≥ 10× faster than performer-pytorch", "15.00× faster", "met"),
        ("bidirectional: peak memory linear in L up to 128k", "1.12" + per_position, "met"),
        ("causal: peak memory linear in L up to 128k", "2.50" + per_position, "missed"),
        ("decode step time flat from 1k to 128k of context", "1.10×", "met"),
    ]


def test_the_suite_runs_only_files_with_cuda_tests_and_stops_them_on_time(tmp_path):
    import time

    from performers.bench.gpu import run_tests

    (tmp_path / "test_other.py").write_text("import a_package_the_gpu_machine_lacks\n")
    (tmp_path / "test_slow.py").write_text(
        "import subprocess, sys, time\nimport pytest\n\n\n@pytest.mark.cuda\ndef test_slow():\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n    time.sleep(60)\n"
    )
    start = time.perf_counter()
    result = run_tests(tmp_path, timeout_s=8)
    assert result["status"] == "timeout" and result["files"] == ["test_slow.py"]
    assert time.perf_counter() - start < 30
    (tmp_path / "test_slow.py").write_text(
        "import pytest\n\n\n@pytest.mark.cuda\ndef test_quick():\n    pass\n"
    )
    result = run_tests(tmp_path, timeout_s=60)
    assert result["status"] == "passed" and "1 passed" in result["summary"]


def test_a_failing_point_is_recorded_with_its_reason_and_the_suite_goes_on():
    import torch

    from performers.bench.gpu import AttentionSpec, measure_attention, measure_decode, profile_kernels

    cpu = torch.device("cpu")
    spec = AttentionSpec("no-such-method", 32, False, dim=16, features=16, dtype="float32")
    assert measure_attention(spec, cpu, 1).note.startswith("ValueError: unknown method 'no-such-method'")
    assert profile_kernels(spec, cpu)["note"].startswith("ValueError: unknown method")
    decode = measure_decode(32, "favor-nowhere", cpu, dim=16, features=16, dtype="float32")
    assert "step_ms" not in decode and decode["note"].startswith("ValueError: backend must be")


def test_without_a_gpu_the_command_says_so_in_one_line(capsys):
    import pytest
    import torch

    from performers.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["bench", "gpu", "--out", "unused"]) == 2
    assert capsys.readouterr().err == (
        "performers bench gpu: error: no CUDA device (use --device cpu for a small check)\n"
    )
