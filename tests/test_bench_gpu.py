"""The GPU suite's code path on CPU with tiny sizes (the suite itself needs a GPU): every
section is measured or says why not, and the reports are written."""

import json

from performers.bench.gpu import run_gpu_suite


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
        log=lambda *_: None,
    )
    saved = json.loads((tmp_path / "gpu.json").read_text())
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
    report = (tmp_path / "gpu.md").read_text()
    assert "| causal | 32 | 8 | 16 | 16 | favor-torch |" in report
    assert (tmp_path / "gpu.png").stat().st_size > 0
