"""Performer models and their config: shapes, losses, causality, padding, redraw, backends, compile."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from performers import (
    FavorAttention,
    FavorConfig,
    PerformerConfig,
    PerformerForCausalLM,
    PerformerForMaskedLM,
    PerformerModel,
)

DT = torch.float64


FAVOR_FIELDS = ("num_features", "kernel", "projection", "row_norms", "redraw_every", "seed", "chunk_size")


def tiny(**overrides) -> PerformerConfig:
    """A small config; FAVOR options among ``overrides`` go into its FavorConfig."""
    favor = {"num_features": 16, "chunk_size": 8}
    favor.update({k: overrides.pop(k) for k in FAVOR_FIELDS if k in overrides})
    fields = {
        "vocab_size": 37,
        "d_model": 16,
        "num_layers": 2,
        "num_heads": 4,
        "d_ff": 32,
        "max_position_embeddings": 64,
        "dropout": 0.0,
        "pad_token_id": 0,
    }
    fields["favor"] = FavorConfig(**favor)
    fields.update(overrides)  # an explicit favor= wins
    return PerformerConfig(**fields)


def ids(b=2, length=21, seed=0, vocab=37):
    return torch.randint(1, vocab, (b, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config


def test_config_json_round_trip(tmp_path):
    config = tiny(position="rotary", kernel="softmax-hyperbolic", redraw_every=0, eos_token_id=2)
    assert PerformerConfig.from_json(config.to_json()) == config
    assert PerformerConfig.from_dict(config.to_dict()) == config
    config.save(tmp_path / "c.json")
    assert PerformerConfig.load(tmp_path / "c.json") == config
    assert json.loads(config.to_json())["favor"]["num_features"] == 16
    assert config.favor == FavorConfig.from_json(config.favor.to_json())


def test_config_paper_sizes_are_expressible():
    config = PerformerConfig(
        vocab_size=25, d_model=512, num_layers=36, num_heads=8, d_ff=1024, max_position_embeddings=8192
    )
    with torch.device("meta"):  # build without allocating memory
        model = PerformerForMaskedLM(config)
    assert len(model.model.layers) == 36
    per_layer = 4 * (512 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 512 + 512) + 4 * 512
    expected = 25 * 512 + 8192 * 512 + 36 * per_layer + 2 * 512 + 25
    assert model.num_parameters() == expected


@pytest.mark.parametrize(
    "overrides,error,pattern",
    [
        ({"d_model": 18}, ValueError, r"d_model \(18\) must be divisible by num_heads \(4\)"),
        ({"kernel": "gauss"}, ValueError, r"unknown kernel 'gauss'; known kernels are 'softmax'"),
        ({"num_layers": -1}, ValueError, r"num_layers must be >= 1, got -1"),
        ({"vocab_size": 0}, ValueError, r"vocab_size must be >= 1"),
        ({"d_ff": 2.5}, TypeError, r"d_ff must be an int"),
        ({"num_features": None}, ValueError, r"kernel 'softmax' needs random features"),
        ({"num_features": -3}, ValueError, r"num_features must be >= 1"),
        ({"position": "sinusoidal"}, ValueError, r"position must be one of"),
        ({"attention": "flash"}, ValueError, r"attention must be one of"),
        ({"dropout": 1.5}, ValueError, r"dropout must be in \[0.0, 1.0\)"),
        ({"pad_token_id": 37}, ValueError, r"pad_token_id \(37\) must be < vocab_size \(37\)"),
        ({"projection": "iid", "row_norms": "sqrt_d"}, ValueError, r"sqrt_d"),
        ({"favor": {"num_features": 8}}, TypeError, r"favor must be a FavorConfig"),
        ({"position": "rotary", "d_model": 12, "num_heads": 4}, ValueError, r"even head dimension"),
        ({"redraw_every": -1}, ValueError, r"redraw_every must be >= 0"),
    ],
)
def test_config_validation_errors(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        tiny(**overrides)


def test_config_no_projection_for_generalized_kernels():
    assert tiny(kernel="relu", num_features=None).favor.num_features is None
    legacy = tiny().to_dict()
    del legacy["favor"]
    legacy |= {"kernel": "relu", "num_features": 0}  # performers 0.1.0's flat fields and its "none"
    assert PerformerConfig.from_dict(legacy).favor == FavorConfig(None, "relu")
    model = PerformerModel(tiny(kernel="relu", num_features=None))
    assert all(m.projection is None for m in model.favor_attention_modules())


def test_config_from_dict_rejects_unknown_fields():
    data = tiny().to_dict() | {"n_layers": 3}
    with pytest.raises(ValueError, match=r"unknown PerformerConfig field\(s\) \['n_layers'\]"):
        PerformerConfig.from_dict(data)
    with pytest.raises(ValueError, match="not valid JSON"):
        PerformerConfig.from_json("{")


# ---------------------------------------------------------------- forward, losses


def test_encoder_and_heads_shapes_and_tied_embeddings():
    torch.manual_seed(0)
    x = ids()
    hidden = PerformerModel(tiny())(x).last_hidden_state
    assert hidden.shape == (2, 21, 16)
    mlm = PerformerForMaskedLM(tiny())
    assert mlm(x).logits.shape == (2, 21, 37)
    assert mlm.lm_head.weight is None and "lm_head.weight" not in mlm.state_dict()
    untied = PerformerForCausalLM(tiny(tie_embeddings=False))
    assert untied.lm_head.weight.shape == (37, 16)
    out = untied(x, logits_to_keep=1)
    assert out.logits.shape == (2, 1, 37) and out.loss is None


def test_masked_lm_loss_ignores_minus_100():
    torch.manual_seed(0)
    model = PerformerForMaskedLM(tiny()).to(DT)
    x = ids()
    labels = torch.full_like(x, -100)
    labels[:, 3] = x[:, 3]
    labels[1, 10] = 5
    out = model(x, labels=labels)
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)


def test_causal_lm_shifts_labels_like_hugging_face():
    torch.manual_seed(0)
    model = PerformerForCausalLM(tiny()).to(DT)
    x = ids()
    labels = x.clone()
    labels[0, 5] = -100
    out = model(x, labels=labels)
    logits, targets = out.logits[:, :-1].reshape(-1, 37), labels[:, 1:].reshape(-1)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, targets, ignore_index=-100))


@pytest.mark.parametrize("attention", ["favor", "exact"])
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_causal_lm_future_tokens_never_change_past_logits(attention, position):
    torch.manual_seed(0)
    model = PerformerForCausalLM(tiny(attention=attention, position=position)).to(DT)
    x = ids(length=30)
    changed = x.clone()
    changed[:, 17:] = ids(length=13, seed=5)
    a, b = model(x).logits, model(changed).logits
    assert torch.equal(a[:, :17], b[:, :17])
    assert not torch.allclose(a[:, 17:], b[:, 17:])


def test_masked_lm_is_bidirectional_and_ignores_padding():
    torch.manual_seed(0)
    model = PerformerForMaskedLM(tiny()).to(DT)
    x = ids(length=12)
    changed = x.clone()
    changed[:, -1] = (x[:, -1] % 36) + 1
    assert not torch.allclose(model(x).logits[:, 0], model(changed).logits[:, 0])
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    other_padding = x.clone()
    other_padding[1, 8:] = 3
    a = model(x, attention_mask=mask).logits
    b = model(other_padding, key_padding_mask=mask == 0).logits
    torch.testing.assert_close(a[1, :8], b[1, :8], rtol=1e-12, atol=1e-12)
    alone = model(x[1:, :8]).logits
    torch.testing.assert_close(a[1, :8], alone[0], rtol=1e-10, atol=1e-12)


def test_learned_positions_limit_and_mask_errors():
    model = PerformerForCausalLM(tiny(max_position_embeddings=16))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(ids(length=17))
    with pytest.raises(ValueError, match="not both"):
        model(ids(), attention_mask=torch.ones(2, 21), key_padding_mask=torch.zeros(2, 21, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        model(ids(), key_padding_mask=torch.zeros(2, 21))
    with pytest.raises(ValueError, match="need causal attention"):
        PerformerModel(tiny())(ids(), use_cache=True)


def test_dropout_is_off_in_eval_and_outputs_are_deterministic():
    torch.manual_seed(0)
    model = PerformerForMaskedLM(tiny(dropout=0.3))
    x = ids()
    model.train()
    assert not torch.equal(model(x).logits, model(x).logits)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)


# ---------------------------------------------------------------- backends and redraw


def test_switch_between_favor_and_exact_with_the_same_weights():
    torch.manual_seed(0)
    favor = PerformerForCausalLM(tiny()).to(DT)
    exact = PerformerForCausalLM(tiny(attention="exact")).to(DT)
    exact.load_state_dict(favor.state_dict())  # same tensors under both backends
    x = ids()
    reference = exact(x).logits
    favor.set_attention("exact")
    assert favor.config.attention == "exact"
    assert torch.equal(favor(x).logits, reference)
    favor.set_attention("favor")
    approx = favor(x).logits
    assert not torch.equal(approx, reference)
    # With many features FAVOR+ approximates the softmax model closely.
    many = PerformerForCausalLM(tiny(num_features=4096)).to(DT)
    many.load_state_dict({k: v for k, v in favor.state_dict().items() if "projection" not in k}, strict=False)
    many.set_attention("exact")
    exact_logits = many(x).logits
    many.set_attention("favor")
    assert (many(x).logits - exact_logits).abs().max() < 0.05 * exact_logits.abs().max()


def test_model_redraw_is_reproducible_across_instances():
    a, b = PerformerForCausalLM(tiny(seed=11)), PerformerForCausalLM(tiny(seed=11))
    pa, pb = a.favor_attention_modules(), b.favor_attention_modules()
    assert [m.layer_index for m in pa] == [0, 1]
    assert all(torch.equal(x.projection, y.projection) for x, y in zip(pa, pb, strict=True))
    assert not torch.equal(pa[0].projection, pa[1].projection)
    assert not torch.equal(
        pa[0].projection, PerformerForCausalLM(tiny(seed=12)).favor_attention_modules()[0].projection
    )
    redrawer_a = a.feature_redrawer(every=3)
    for _ in range(6):
        redrawer_a.step()
    b.feature_redrawer().redraw()
    b.feature_redrawer().redraw()
    assert all(torch.equal(x.projection, y.projection) for x, y in zip(pa, pb, strict=True))
    assert all(int(m.redraw_count) == 2 for m in pa + pb)


def test_config_redraw_every_reaches_the_modules():
    model = PerformerForCausalLM(tiny(redraw_every=2))
    assert all(
        isinstance(m, FavorAttention) and m.config.redraw_every == 2 for m in model.favor_attention_modules()
    )
    redrawer = model.feature_redrawer()
    assert [redrawer.step() for _ in range(4)] == [False, True, False, True]


def test_training_step_with_redraw_updates_weights():
    torch.manual_seed(0)
    model = PerformerForCausalLM(tiny(redraw_every=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    redrawer = model.feature_redrawer()
    x = ids()
    before = model.model.embed_tokens.weight.detach().clone()
    loss = model(x, labels=x).loss
    loss.backward()
    optimizer.step()
    assert redrawer.step()
    assert not torch.equal(model.model.embed_tokens.weight, before)
    assert torch.isfinite(model(x, labels=x).loss)


# ---------------------------------------------------------------- torch.compile


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_forward_backward():
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        pytest.skip("torch.compile (inductor) needs a C++ compiler on CPU; none found")
    torch.manual_seed(0)
    config = tiny(num_layers=1, vocab_size=23, d_model=8, num_heads=2, d_ff=16, num_features=8)
    model = PerformerForCausalLM(config)
    x = torch.randint(0, 23, (2, 8), generator=torch.Generator().manual_seed(0))
    eager = model(x, labels=x).loss
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    try:
        compiled = torch.compile(model)
        loss = compiled(x, labels=x).loss
        loss.backward()
    except Exception as err:  # the platform (not the model) cannot compile
        if "compiler" in str(err).lower() or "cpp" in str(err).lower():
            pytest.skip(f"torch.compile unavailable on this platform: {err}")
        raise
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_a_mask_without_padding_is_dropped_so_exact_attention_uses_fused_sdpa(monkeypatch, attention):
    model = PerformerForMaskedLM(tiny(attention=attention)).eval()
    x = ids()
    masks = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        plain = model(x).logits
        ones = model(x, attention_mask=torch.ones_like(x)).logits
    assert torch.equal(plain, ones)
    if attention == "exact":
        assert masks and all(m is None for m in masks)  # no (L, L) bias was built
        masks.clear()
        padded = torch.ones_like(x)
        padded[0, -3:] = 0
        with torch.no_grad():
            model(x, attention_mask=padded)
        assert masks and all(m is not None for m in masks)
