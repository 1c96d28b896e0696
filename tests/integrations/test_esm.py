"""ESM (ESM-2's family) under the "favor" attention (performers.integrations.hf_esm + transformers).

Every model is a tiny random ESM built here (hidden 16, 2 layers, 2 heads, ESM's 33-token
vocabulary): nothing is downloaded. Outputs compared with softmax attention are computed in
float64 so that the only difference left is FAVOR+'s Monte-Carlo error, whose size the tests
derive from the draws themselves (see :func:`_agreement`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    EsmConfig,
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
    EsmTokenizer,
    OPTConfig,
    OPTModel,
)

from performers import FavorConfig, FeatureRedrawer
from performers.cli import main
from performers.integrations import hf_esm
from performers.integrations import transformers as hf
from tests.helpers.numerics import Z

# ESM-2's vocabulary, ids 0-32 (../shared/reference/esm.md; the order of the HF checkpoints).
ESM_VOCAB = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()
)
CLS, PAD, EOS, MASK = 0, 1, 2, 32
RESIDUES = (4, 24)  # ids of L ... C: the 20 standard amino acids

CLASSES = {
    "EsmModel": (EsmModel, AutoModel),
    "EsmForMaskedLM": (EsmForMaskedLM, AutoModelForMaskedLM),
    "EsmForTokenClassification": (EsmForTokenClassification, AutoModelForTokenClassification),
    "EsmForSequenceClassification": (EsmForSequenceClassification, AutoModelForSequenceClassification),
}
POSITIONS = ("rotary", "absolute")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny ops on a shared machine (conftest restores the count)


def _config(position: str = "rotary", **extra) -> EsmConfig:
    options = {
        "vocab_size": len(ESM_VOCAB),
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
        "position_embedding_type": position,
        "pad_token_id": PAD,
        "mask_token_id": MASK,
        "token_dropout": True,
        "emb_layer_norm_before": False,
        "num_labels": 3,
        # Larger than ESM's 0.02 so that the softmax logits are O(1): attention then depends on
        # them, and a wrong temperature moves the outputs well beyond FAVOR+'s noise.
        "initializer_range": 0.1,
    }
    return EsmConfig(**{**options, **extra})


def _model(name: str = "EsmForMaskedLM", position: str = "rotary", **extra):
    torch.manual_seed(0)
    model = CLASSES[name][0](_config(position, **extra)).double().eval()
    model.set_attn_implementation("sdpa")
    return model


def _proteins(lengths: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``<cls> residues <eos>`` right-padded with ``<pad>``: ``(ids, attention_mask)``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length + 1] = CLS, EOS
        ids[row, 1 : length + 1] = torch.randint(*RESIDUES, (length,), generator=generator)
        mask[row, : length + 2] = 1
    return ids, mask


def _output(model, ids, mask=None) -> torch.Tensor:
    out = model(ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _agreement(model, exact: torch.Tensor, ids, mask, *, features: int, draws: int) -> float:
    """``‖mean of the FAVOR+ outputs − exact‖² / (Σ of their variances / draws)`` over ``draws``
    independent projections (seeds), for the elements ``exact`` holds (padded rows excluded).

    FAVOR+'s error is Monte-Carlo noise of variance ~1/M plus a ratio-estimator bias ~1/M; at
    large M the bias is negligible against the noise of a mean of ``draws`` draws, so the
    statistic is a squared standard score: ≈ 1 when the backend estimates exactly this softmax
    attention, and a ``Z``-sigma event above ``Z²`` (for fully correlated elements it is
    F(1, draws-1)-distributed, the worst case). A wrong temperature, a leaking pad or a lost
    token-dropout rescaling is a systematic error that grows it without bound as draws grow.
    """
    outputs = []
    for seed in range(draws):
        hf.performerize(model, FavorConfig(features, seed=seed))
        with torch.no_grad():
            outputs.append(_output(model, ids, mask))
    stacked = torch.stack(outputs)
    keep = _real(exact, mask)
    error = (stacked.mean(0) - exact)[keep]
    variance = stacked.var(0, unbiased=True)[keep]
    return float(error.pow(2).sum() / (variance.sum() / draws))


def _real(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Elements of ``out`` that belong to real (unpadded) tokens, or all of a pooled output."""
    if out.dim() == 2:  # (B, labels): pooled from <cls>
        return torch.ones_like(out, dtype=torch.bool)
    return mask.bool()[..., None].expand_as(out)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", list(CLASSES))
def test_favor_estimates_the_models_own_softmax_attention(name, position):
    model = _model(name, position)
    ids, mask = _proteins((10, 7))  # one padded protein: padding is part of what must agree
    with torch.no_grad():
        exact = _output(model, ids, mask)
    statistic = _agreement(model, exact, ids, mask, features=1024, draws=12)
    assert statistic < Z**2, statistic
    assert hf.is_performerized(model)
    assert [m.layer_idx for _, m in hf.attention_modules(model)] == [0, 1]


def test_the_agreement_test_catches_a_wrong_temperature(monkeypatch):
    # The bug the ESM path must avoid: ESM has already divided q by √D and calls the attention
    # with scaling=1.0; taking the default 1/√D again would divide the logits twice.
    model = _model("EsmForMaskedLM", "rotary")
    ids, mask = _proteins((10, 7))
    with torch.no_grad():
        exact = _output(model, ids, mask)
    monkeypatch.setattr(hf_esm, "favor_query", lambda module, q, scaling: (q, q.shape[-1] ** -0.5))
    statistic = _agreement(model, exact, ids, mask, features=1024, draws=12)
    # Measured: ~160 here, against 0.5-1.7 for the eight right ones above (bound Z² ≈ 20).
    assert statistic > 4 * Z**2, statistic


def test_undoing_the_query_prescaling_lowers_favors_error(monkeypatch):
    # Same logits either way; what changes is how FAVOR+'s two inputs are scaled. Passing ESM's
    # pre-scaled q' with scale 1 feeds k at full norm into the features (variance ~exp(‖q̃+k̃‖²));
    # the backend's q = q'·√D with scale 1/√D balances them as for every other family. Measured
    # with head size 64 (ESM-2 650M's): the RMS error is 5x smaller (measured 0.051 against 0.264,
    # output std 0.39; 10x at M = 1024).
    model = _model("EsmForMaskedLM", "rotary", hidden_size=64, num_attention_heads=1, initializer_range=0.05)
    ids, mask = _proteins((10,))
    with torch.no_grad():
        exact = _output(model, ids, mask)

    def rms_error() -> float:
        total = 0.0
        for seed in range(4):
            hf.performerize(model, FavorConfig(256, seed=seed))
            with torch.no_grad():
                total += float((_output(model, ids, mask) - exact).pow(2).mean())
        return (total / 4) ** 0.5

    balanced = rms_error()
    monkeypatch.setattr(hf_esm, "favor_query", lambda module, q, scaling: (q, scaling))
    prescaled = rms_error()
    assert balanced < prescaled / 3, (balanced, prescaled)


def test_favor_query_gives_the_same_logits_and_leaves_other_modules_alone():
    model = _model()
    module = hf.attention_modules(model)[0][1]
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64) * 8**-0.5  # as ESM passes it
    unscaled, scale = hf_esm.favor_query(module, q, 1.0)
    assert scale == 8**-0.5
    torch.testing.assert_close(unscaled * scale, q, rtol=0, atol=0)  # √8·8^(-1/2): exact here
    assert hf_esm.favor_query(module, q, 0.125) == (q, 0.125)  # not pre-scaled: untouched
    other = torch.nn.Linear(2, 2)
    assert hf_esm.favor_query(other, q, 1.0) == (q, 1.0)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("name", list(CLASSES))
def test_padding_never_leaks(name, position):
    model = hf.performerize(_model(name, position), FavorConfig(32))
    ids, mask = _proteins((9, 5))
    short = ids[1:, :7]  # the second protein alone, no padding
    with torch.no_grad():
        batched = _output(model, ids, mask)[1]
        alone = _output(model, short)[0]
        unmasked = _output(model, ids)[1]  # padding keys attended: must differ
    if batched.dim() == 2:
        batched, unmasked = batched[:7], unmasked[:7]
    torch.testing.assert_close(batched, alone, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(unmasked, alone, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(CLASSES))
def test_save_and_reload_runs_favor_by_default(name, tmp_path):
    model = hf.performerize(_model(name), FavorConfig(16, seed=3))
    FeatureRedrawer(model).redraw()  # draw 1: the saved config must record it
    ids, mask = _proteins((8, 6))
    with torch.no_grad():
        expected = _output(model, ids, mask)
    model.save_pretrained(tmp_path)
    loaded = CLASSES[name][1].from_pretrained(tmp_path).eval()  # no attn_implementation given
    assert type(loaded).__name__ == name
    assert hf.is_performerized(loaded)
    with torch.no_grad():
        torch.testing.assert_close(_output(loaded, ids, mask), expected, rtol=0, atol=0)
    pairs = zip(hf.attention_modules(model), hf.attention_modules(loaded), strict=True)
    for (_, saved), (_, reloaded) in pairs:
        assert reloaded.layer_idx == saved.layer_idx
        assert torch.equal(saved.favor.projection, reloaded.favor.projection)
        assert int(reloaded.favor.redraw_count) == 1


def test_a_model_whose_layers_have_no_index_is_numbered_by_performerize():
    # ESM builds its attention without layer_idx; a model built before performers was imported
    # (or an older transformers) has none, and performerize gives them their layer's index.
    model = _model()
    for _, module in hf.attention_modules(model):
        module.layer_idx = None
    model.set_attn_implementation("favor")
    ids, mask = _proteins((6,))
    with pytest.raises(ValueError, match=r"layer_idx.*performerize"):
        model(ids, attention_mask=mask)
    hf.performerize(model, FavorConfig(16))
    assert [m.layer_idx for _, m in hf.attention_modules(model)] == [0, 1]
    model(ids, attention_mask=mask)


def test_a_causal_esm_never_sees_future_tokens():
    # (token dropout off: its rescaling counts <mask> over the whole row, future included)
    model = hf.performerize(_model("EsmModel", is_decoder=True, token_dropout=False), FavorConfig(32))
    ids, _ = _proteins((10,))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 3) % len(ESM_VOCAB)
    with torch.no_grad():
        a, b = _output(model, ids), _output(model, changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=1e-12, atol=1e-13)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_a_decoder_cross_attention_gets_its_own_projection():
    model = EsmModel(_config(is_decoder=True, add_cross_attention=True)).eval()
    hf.performerize(model, FavorConfig(16))
    modules = dict(hf.attention_modules(model))
    self_0 = modules["encoder.layer.0.attention.self"]
    cross_0 = modules["encoder.layer.0.crossattention.self"]
    assert self_0.layer_idx == cross_0.layer_idx == 0 and cross_0.is_cross_attention
    assert not torch.equal(self_0.favor.projection, cross_0.favor.projection)


def test_token_dropout_is_left_as_the_checkpoint_defines_it():
    model = _model()
    ids, mask = _proteins((9, 5))
    ids[0, 3] = ids[0, 5] = ids[1, 2] = MASK
    with torch.no_grad():
        exact = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[0]
        hf.performerize(model, FavorConfig(16))
        favor = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[0]
    assert torch.equal(favor, exact)
    # ESM's rule: <mask> embeddings zeroed, the others scaled by (1 - 0.15·0.8) / (1 - the
    # sequence's fraction of <mask> among its real tokens), padding zeroed.
    words = model.esm.embeddings.word_embeddings(ids).masked_fill((ids == MASK)[..., None], 0.0)
    fraction = (ids == MASK).sum(-1) / mask.sum(-1)
    expected = words * ((1 - 0.15 * 0.8) / (1 - fraction))[:, None, None] * mask[..., None]
    # (HF computes the observed fraction in float32: its rounding, 6e-8, is the tolerance's scale.)
    torch.testing.assert_close(exact, expected, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------
# performers convert


def esm_tokenizer(directory: Path) -> EsmTokenizer:
    """ESM-2's tokenizer, from a ``vocab.txt`` of its 33 tokens (written into ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    return EsmTokenizer(str(directory / "vocab.txt"))


def test_performers_convert_an_esm_directory(tmp_path, capsys):
    source = tmp_path / "esm"
    tokenizer = esm_tokenizer(source)
    model = EsmForMaskedLM(_config()).eval()
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    assert main(["convert", str(source), str(tmp_path / "out"), "--num-features", "16"]) == 0
    assert "EsmForMaskedLM with FAVOR+ attention" in capsys.readouterr().out
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert hf.is_performerized(loaded)
    assert loaded.config.favor_config["num_features"] == 16
    reloaded_tokens = EsmTokenizer.from_pretrained(tmp_path / "out")
    encoded = reloaded_tokens("MKTAYIAK", return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == tokenizer("MKTAYIAK")["input_ids"]
    assert encoded["input_ids"][0, 0] == CLS and encoded["input_ids"][0, -1] == EOS
    with torch.no_grad():
        logits = loaded(**encoded).logits
    assert logits.shape == (1, 10, len(ESM_VOCAB)) and torch.isfinite(logits).all()


def test_performers_convert_an_esm_directory_without_a_tokenizer(tmp_path):
    EsmModel(_config()).save_pretrained(tmp_path / "esm")  # weights and config only
    assert main(["convert", str(tmp_path / "esm"), str(tmp_path / "out"), "--num-features", "16"]) == 0
    assert hf.is_performerized(AutoModel.from_pretrained(tmp_path / "out"))


def test_convert_still_refuses_an_unsupported_family_in_one_line(tmp_path, capsys):
    config = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
    )
    OPTModel(config).save_pretrained(tmp_path / "opt")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "opt"), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("performers convert: error: ")
    assert "'opt'" in lines[0] and "'esm'" in lines[0]  # the supported list names ESM now
    assert not (tmp_path / "out").exists()
