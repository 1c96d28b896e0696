"""results.json: one schema, atomic, NaN written as null, baselines beside every metric."""

import json
import math

from performers.jobs.results_file import Metric, format_metric, read_results, write_results


def test_round_trip_keeps_every_metric_with_its_baseline(tmp_path):
    metrics = {
        "accuracy": Metric(0.1685, 0.0791, "unigram (training split)", True, 51234),
        "perplexity": Metric(15.2, 17.9, "unigram (training split)", False, 51234),
    }
    path = write_results(tmp_path / "results.json", command="evaluate", metrics=metrics, model="m")
    got = read_results(path)
    assert got["command"] == "evaluate" and got["model"] == "m" and got["format"] == 1
    assert got["metrics"]["accuracy"] == {
        "value": 0.1685, "baseline": 0.0791, "baseline_name": "unigram (training split)",
        "higher_is_better": True, "count": 51234,
    }  # fmt: skip
    assert got["metrics"]["perplexity"]["higher_is_better"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


def test_undefined_numbers_are_null_not_invalid_json(tmp_path):
    path = write_results(
        tmp_path / "r.json", command="finetune", metrics={"spearman": Metric(math.nan, None, "none")}
    )
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["spearman"]["value"] is None


def test_format_metric_shows_the_baseline():
    line = format_metric("accuracy", Metric(0.1685, 0.0791, "unigram"), percent=True)
    assert line == "accuracy 16.85% (unigram 7.91%)"
    assert format_metric("spearman", Metric(0.15, None, "none")) == "spearman 0.15 (none n/a)"
