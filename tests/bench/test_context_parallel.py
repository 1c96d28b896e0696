"""performers bench context-parallel on tiny sizes: every point measured, the report written."""

import json

import pytest

from performers.bench.context_parallel import Spec, run_context_parallel, summary_bytes
from tests.helpers.results import assert_written_by_the_results_writer


@pytest.mark.slow
def test_tiny_context_parallel_benchmark_writes_its_report(tmp_path):
    base = Spec(length=64, heads=2, head_dim=4, features=8, repeats=1, threads=1)
    longest = Spec(
        kind="longest", causal=True, heads=2, head_dim=4, features=8, d_model=8, d_ff=16, threads=1
    )
    out = tmp_path / "distributed.json"
    results = run_context_parallel(
        base, [2], out=out, longest=longest, longest_worlds=[2], budget_gib=8.0, longest_start=64,
        longest_max=128, log=lambda _: None,
    )  # fmt: skip
    assert assert_written_by_the_results_writer(out)["op"] == json.loads(
        json.dumps(results["op"], default=str)
    )
    ops = results["op"]
    # Both directions: the plain single-process op, then the distributed one on 2 processes.
    assert [(p["spec"]["causal"], p["spec"]["world"], p["spec"]["single"]) for p in ops] == [
        (False, 1, True), (False, 2, False), (True, 1, True), (True, 2, False)
    ]  # fmt: skip
    assert all(p["error"] is None and p["peak_mib"] and p["step_seconds"] > 0 for p in ops)
    for p in ops:
        payload = [c["bytes"] for c in p["calls"]]
        if p["spec"]["world"] == 1 and p["spec"]["single"]:
            assert payload == []  # the plain op communicates nothing
        elif p["spec"]["world"] == 2:
            # The summary is exchanged forward and backward; its size is the formula's.
            summary = summary_bytes(Spec(**p["spec"]))
            assert sum(b >= summary for b in payload) >= 2, payload
    points = results["longest"]
    assert points and points[0]["spec"]["length"] == 64
    assert [p["spec"]["length"] for p in points] == [64, 128]  # doubled up to longest_max
    assert results["longest_fit"] == {"2": 128}
    report = out.with_suffix(".md").read_text()
    assert "| causal | 2 | distributed op |" in report and "Longest sequence within 8 GiB" in report
    assert "Longest that fits with 2 process(es): **L = 128**" in report
    assert out.with_suffix(".png").stat().st_size > 0
