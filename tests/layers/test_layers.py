"""Attention modules: FavorAttention, self/cross-attention, redraw, parity with nn.MultiheadAttention."""

import warnings

import pytest
import torch
from torch import nn

from performers import (
    FavorAttention,
    FavorConfig,
    FeatureRedrawer,
    MultiheadFavorAttention,
    PerformerCrossAttention,
    PerformerSelfAttention,
    favor_attention,
    make_projection,
    replace_multihead_attention,
)
from performers.layers import (
    AttentionDropoutWarning,
    KVCache,
    RotaryEmbedding,
    projection_seed,
    sdpa_attention,
)
from performers.ops import FavorState
from tests.helpers.numerics import generator

DT = torch.float64


def qkv(b=2, h=3, length=13, d=8, seed=0):
    g = generator(seed)
    return tuple(torch.randn(b, h, length, d, generator=g, dtype=DT) for _ in range(3))


def padding(b=2, length=13, pads=(0, 4), left=False):
    mask = torch.zeros(b, length, dtype=torch.bool)
    for row, n in enumerate(pads):
        if n:
            if left:
                mask[row, :n] = True
            else:
                mask[row, -n:] = True
    return mask


# ---------------------------------------------------------------- FavorAttention


@pytest.mark.parametrize("kernel,num_features", [("softmax", 16), ("softmax-hyperbolic", 8), ("relu", None)])
@pytest.mark.parametrize("causal", [False, True])
def test_favor_module_equals_ops(kernel, num_features, causal):
    module = FavorAttention(8, FavorConfig(num_features, kernel, seed=3, chunk_size=4), dtype=DT)
    q, k, v = qkv()
    mask = padding()
    out = module(q, k, v, is_causal=causal, key_padding_mask=mask)
    expected = favor_attention(
        q, k, v, module.projection, is_causal=causal, kernel=kernel, key_padding_mask=mask, chunk_size=4
    )
    assert torch.equal(out, expected)


def test_favor_module_state_and_step_equal_parallel():
    module = FavorAttention(8, FavorConfig(16), dtype=DT)
    q, k, v = qkv(length=9)
    full = module(q, k, v, is_causal=True)
    out, state = module(q[:, :, :5], k[:, :, :5], v[:, :, :5], is_causal=True, return_state=True)
    steps = [out]
    for t in range(5, 9):
        step, state = module.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state)
        steps.append(step)
    torch.testing.assert_close(torch.cat(steps, dim=2), full, rtol=1e-10, atol=1e-12)


def test_projection_is_a_buffer_that_moves_with_to():
    module = FavorAttention(8, FavorConfig(16))
    assert set(module.state_dict()) == {"projection", "redraw_count", "step_count"}
    assert module.projection.shape == (16, 8) and module.projection.dtype == torch.float32
    assert list(module.parameters()) == []
    module.to(DT)
    assert module.projection.dtype == DT and module.redraw_count.dtype == torch.long
    assert module.feature_dim == 16
    assert FavorAttention(8, FavorConfig(16, "trig")).feature_dim == 32
    assert FavorAttention(8).config == FavorConfig() and FavorConfig().num_features == 256


def test_generalized_kernel_without_projection():
    module = FavorAttention(8, FavorConfig(None, "elu"))
    assert module.projection is None and "projection" not in module.state_dict()
    assert module.feature_dim == 8
    q, k, v = qkv()
    module.redraw()  # nothing to draw, the counter still moves
    assert int(module.redraw_count) == 1
    torch.testing.assert_close(
        module(q.float(), k.float(), v.float()), favor_attention(q, k, v, kernel="elu").float()
    )


def test_softmax_without_features_is_an_error():
    with pytest.raises(ValueError, match="kernel 'softmax' needs random features"):
        FavorConfig(None, "softmax")
    with pytest.raises(ValueError, match="unknown kernel 'gauss'"):
        FavorConfig(16, "gauss")
    with pytest.raises(ValueError, match=r"FavorConfig\.projection must be one of"):
        FavorConfig(16, projection="gaussian")
    with pytest.raises(ValueError, match="sqrt_d"):
        FavorConfig(16, projection="iid", row_norms="sqrt_d")
    with pytest.raises(TypeError, match="config must be a FavorConfig"):
        FavorAttention(8, 16)


def test_favor_attention_names_the_head_dim_it_was_built_for():
    module = FavorAttention(16, FavorConfig(8))
    q, k, v = qkv(d=8)  # D = 8 into a module for heads of 16
    for call in (lambda: module(q, k, v), lambda: module.step(q[:, :, :1], k[:, :, :1], v[:, :, :1], None)):
        with pytest.raises(ValueError, match=r"head_dim = 16, but q has D = 8") as error:
            call()
        assert "projection" not in str(error.value)  # not the buffer the user never passed
    q16 = torch.randn(2, 3, 13, 16, dtype=DT)
    with pytest.raises(ValueError, match=r"head_dim = 16, but k has D = 8"):
        module(q16, k, v)


# ---------------------------------------------------------------- redraw


def test_projection_is_a_pure_function_of_seed_layer_and_count():
    module = FavorAttention(
        8, FavorConfig(24, seed=5, projection="orthogonal", row_norms="chi"), layer_index=2
    )
    for count in range(3):
        g = torch.Generator().manual_seed(projection_seed(5, 2, count))
        expected = make_projection(24, 8, generator=g, dtype=DT).float()
        assert int(module.redraw_count) == count
        assert torch.equal(module.projection, expected)
        assert torch.equal(module.projection, module.draw_projection(count).float())
        module.redraw()


def test_projection_seed_mixes_all_three_inputs():
    seeds = {projection_seed(s, layer, c) for s in range(3) for layer in range(4) for c in range(5)}
    assert len(seeds) == 60
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="seed"):
        projection_seed(-1, 0, 0)


def test_same_seed_same_projection_other_layer_other_projection():
    config = FavorConfig(16, seed=1)
    a, b = FavorAttention(8, config, layer_index=0), FavorAttention(8, config, layer_index=0)
    c = FavorAttention(8, config, layer_index=1)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, c.projection)


def test_forward_is_deterministic_until_redraw():
    module = FavorAttention(8, FavorConfig(16), dtype=DT)
    q, k, v = qkv()
    for mode in (True, False):
        module.train(mode)
        assert torch.equal(module(q, k, v), module(q, k, v))
    before = module(q, k, v)
    old = module.projection.clone()
    module.redraw()
    assert not torch.equal(module.projection, old)
    assert not torch.equal(module(q, k, v), before)


def test_state_dict_round_trip_restores_projection_and_count():
    source = FavorAttention(8, FavorConfig(16, seed=4), dtype=DT)
    for _ in range(3):
        source.redraw()
    target = FavorAttention(8, FavorConfig(16, seed=4), dtype=DT)
    target.load_state_dict(source.state_dict())
    q, k, v = qkv()
    assert int(target.redraw_count) == 3
    assert torch.equal(target(q, k, v, is_causal=True), source(q, k, v, is_causal=True))
    source.redraw()
    target.redraw()
    assert torch.equal(target.projection, source.projection)


def _stack(num_layers=3, every=0):
    config = FavorConfig(16, seed=7, redraw_every=every)
    return nn.ModuleList(FavorAttention(8, config, layer_index=i) for i in range(num_layers))


def test_feature_redrawer_schedule():
    model = _stack()
    redrawer = FeatureRedrawer(model, every=2)
    assert [redrawer.step() for _ in range(5)] == [False, True, False, True, False]
    assert [int(m.redraw_count) for m in model] == [2, 2, 2]
    assert [int(m.step_count) for m in model] == [5, 5, 5]
    off = _stack()
    assert not any(FeatureRedrawer(off, every=0).step() for _ in range(4))
    own = _stack(every=3)  # every=None falls back to each module's redraw_every
    assert [FeatureRedrawer(own).step() for _ in range(3)] == [False, False, True]
    redrawer.redraw()
    assert [int(m.redraw_count) for m in model] == [3, 3, 3]


def test_resumed_run_redraws_identically():
    uninterrupted = _stack()
    redrawer = FeatureRedrawer(uninterrupted, every=2)
    checkpoint = None
    for step in range(1, 8):
        redrawer.step()
        if step == 3:
            checkpoint = {k: v.clone() for k, v in uninterrupted.state_dict().items()}
    resumed = _stack()
    resumed.load_state_dict(checkpoint)
    resumed_redrawer = FeatureRedrawer(resumed, every=2)
    for _ in range(4):
        resumed_redrawer.step()
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert torch.equal(a.projection, b.projection)
        assert int(a.redraw_count) == int(b.redraw_count) == 3


# ---------------------------------------------------------------- multi-head modules vs ops and nn.MHA


def test_self_attention_favor_equals_ops_composition():
    torch.manual_seed(0)
    attn = PerformerSelfAttention(12, 3, favor=FavorConfig(16, seed=2), dtype=DT)
    x = torch.randn(2, 10, 12, dtype=DT)
    mask = padding(length=10, pads=(0, 3))
    out, cache = attn(x, key_padding_mask=mask, is_causal=True)
    assert cache is None

    def heads(t):
        return t.view(2, 10, 3, 4).transpose(1, 2)

    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    ref = favor_attention(q, k, v, attn.favor.projection, is_causal=True, key_padding_mask=mask)
    expected = attn.out_proj(ref.transpose(1, 2).reshape(2, 10, 12))
    assert torch.equal(out, expected)


def _mha(embed=16, heads=4, batch_first=True, **kw):
    torch.manual_seed(1)
    return nn.MultiheadAttention(embed, heads, batch_first=batch_first, dtype=DT, **kw)


MASK_CASES = ["none", "padding", "causal", "causal+padding"]


def _mha_kwargs(case, length, mask):
    causal = torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)
    return {
        "none": {},
        "padding": {"key_padding_mask": mask},
        "causal": {"attn_mask": causal, "is_causal": True},
        "causal+padding": {"attn_mask": causal, "is_causal": True, "key_padding_mask": mask},
    }[case]


@pytest.mark.parametrize("case", MASK_CASES)
def test_exact_self_attention_equals_nn_multihead_attention(case):
    mha = _mha()
    attn = PerformerSelfAttention(16, 4, attention="exact", dtype=DT)
    attn.load_multihead_attention_weights(mha)
    x = torch.randn(3, 9, 16, dtype=DT, generator=generator(2))
    mask = padding(b=3, length=9, pads=(0, 3, 5))
    kwargs = _mha_kwargs(case, 9, mask)
    expected = mha(x, x, x, need_weights=False, **kwargs)[0]
    out, _ = attn(x, key_padding_mask=kwargs.get("key_padding_mask"), is_causal="attn_mask" in kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", MASK_CASES)
def test_multihead_favor_attention_exact_backend_is_a_drop_in(case, batch_first):
    mha = _mha(batch_first=batch_first)
    module = MultiheadFavorAttention.from_multihead_attention(mha, attention="exact")
    x = torch.randn(3, 9, 16, dtype=DT, generator=generator(3))
    if not batch_first:
        x = x.transpose(0, 1)
    kwargs = _mha_kwargs(case, 9, padding(b=3, length=9, pads=(2, 0, 4)))
    for grad in (True, False):  # nn.MultiheadAttention takes a fused fast path without grad
        mha.train(grad)
        module.train(grad)
        with torch.set_grad_enabled(grad):
            expected = mha(x, x, x, **kwargs)[0]
            out, weights = module(x, x, x, **kwargs)
        assert weights is None
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_multihead_favor_attention_exact_with_arbitrary_masks():
    mha = _mha()
    module = MultiheadFavorAttention.from_multihead_attention(mha, attention="exact")
    g = generator(4)
    q = torch.randn(2, 5, 16, dtype=DT, generator=g)
    kv = torch.randn(2, 7, 16, dtype=DT, generator=g)
    bool_mask = torch.rand(5, 7, generator=g) < 0.3
    bool_mask[:, 0] = False
    float_mask = torch.randn(2 * 4, 5, 7, dtype=DT, generator=g)
    float_padding = torch.zeros(2, 7, dtype=DT).masked_fill(padding(length=7, pads=(0, 2)), float("-inf"))
    for kwargs in ({"attn_mask": bool_mask}, {"attn_mask": float_mask}, {"key_padding_mask": float_padding}):
        expected = mha(q, kv, kv, need_weights=False, **kwargs)[0]
        torch.testing.assert_close(module(q, kv, kv, **kwargs)[0], expected, rtol=1e-12, atol=1e-12)


def test_multihead_favor_attention_favor_masks():
    module = MultiheadFavorAttention.from_multihead_attention(_mha(), favor=FavorConfig(16))
    x = torch.randn(2, 6, 16, dtype=DT, generator=generator(5))
    pad = padding(length=6, pads=(0, 2))
    float_pad = torch.zeros(2, 6, dtype=DT).masked_fill(pad, float("-inf"))
    torch.testing.assert_close(
        module(x, x, x, key_padding_mask=float_pad)[0], module(x, x, x, key_padding_mask=pad)[0]
    )
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=DT)
    torch.testing.assert_close(module(x, x, x, attn_mask=causal)[0], module(x, x, x, is_causal=True)[0])
    with pytest.raises(ValueError, match="causal mask"):
        module(x, x, x, attn_mask=torch.zeros(6, 6, dtype=torch.bool).fill_diagonal_(True))
    with pytest.raises(ValueError, match="0 and -inf"):
        module(x, x, x, key_padding_mask=torch.ones(2, 6, dtype=DT))


def test_cross_attention_exact_matches_mha_and_favor_matches_ops():
    mha = _mha(kdim=6, vdim=6)
    cross = PerformerCrossAttention(16, 4, memory_dim=6, attention="exact", favor=FavorConfig(16), dtype=DT)
    cross.load_multihead_attention_weights(mha)
    g = generator(6)
    x = torch.randn(2, 5, 16, dtype=DT, generator=g)
    memory = torch.randn(2, 8, 6, dtype=DT, generator=g)
    mask = padding(length=8, pads=(3, 0))
    expected = mha(x, memory, memory, key_padding_mask=mask, need_weights=False)[0]
    out = cross(x, memory, memory_key_padding_mask=mask)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)

    cross.attention = "favor"
    q = cross.q_proj(x).view(2, 5, 4, 4).transpose(1, 2)
    k = cross.k_proj(memory).view(2, 8, 4, 4).transpose(1, 2)
    v = cross.v_proj(memory).view(2, 8, 4, 4).transpose(1, 2)
    ref = favor_attention(q, k, v, cross.favor.projection, key_padding_mask=mask)
    expected = cross.out_proj(ref.transpose(1, 2).reshape(2, 5, 16))
    assert torch.equal(cross(x, memory, memory_key_padding_mask=mask), expected)
    with pytest.raises(ValueError, match="memory must have shape"):
        cross(x, torch.randn(2, 8, 16, dtype=DT))


def test_exact_fully_masked_rows_are_zero_with_finite_gradients():
    attn = PerformerSelfAttention(8, 2, attention="exact", dtype=DT)
    x = torch.randn(2, 6, 8, dtype=DT, generator=generator(7), requires_grad=True)
    left = padding(length=6, pads=(0, 3), left=True)  # causal: rows 0-2 of batch 1 see no key
    out, _ = attn(x, key_padding_mask=left, is_causal=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, :3], attn.out_proj.bias.expand(3, 8))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_self_attention_cache_continues_the_parallel_pass(attention):
    attn = PerformerSelfAttention(12, 3, attention=attention, rotary=True, favor=FavorConfig(16), dtype=DT)
    x = torch.randn(2, 9, 12, dtype=DT, generator=generator(8))
    positions = torch.arange(9).expand(2, 9)
    full, _ = attn(x, is_causal=True, position_ids=positions)
    with torch.no_grad():
        out, cache = attn(x[:, :4], is_causal=True, position_ids=positions[:, :4], use_cache=True)
        pieces = [out]
        for t in range(4, 9):
            out, cache = attn(
                x[:, t : t + 1], is_causal=True, position_ids=positions[:, t : t + 1], cache=cache
            )
            pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full.detach(), rtol=1e-10, atol=1e-12)
    assert isinstance(cache, FavorState if attention == "favor" else KVCache)
    if attention == "exact":
        assert cache.length == 9 and cache.capacity >= 9


def test_switching_backend_keeps_state_dict():
    attn = PerformerSelfAttention(8, 2, favor=FavorConfig(8))
    keys = set(attn.state_dict())
    attn.attention = "exact"
    assert set(attn.state_dict()) == keys
    with pytest.raises(ValueError, match="attention must be one of"):
        attn.attention = "flash"
    with pytest.raises(ValueError, match="divisible"):
        PerformerSelfAttention(10, 3)


def test_rotary_attention_depends_on_relative_positions_only():
    torch.manual_seed(0)
    attn = PerformerSelfAttention(8, 2, attention="exact", rotary=True, dtype=DT)
    x = torch.randn(1, 7, 8, dtype=DT)
    positions = torch.arange(7)[None]
    out, _ = attn(x, is_causal=True, position_ids=positions)
    shifted, _ = attn(x, is_causal=True, position_ids=positions + 1000)
    torch.testing.assert_close(out, shifted, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="even head dimension"):
        RotaryEmbedding(5)


def test_multihead_favor_attention_names_the_expected_embedding_sizes():
    # As nn.MultiheadAttention does, before any projection runs (not a bare matmul error).
    module = MultiheadFavorAttention(16, 4, batch_first=True, kdim=12, vdim=10, dtype=DT)
    q, k, v = (torch.randn(2, 5, e, dtype=DT) for e in (16, 12, 10))
    assert module(q, k, v)[0].shape == q.shape
    wrong = torch.randn(2, 5, 8, dtype=DT)
    with pytest.raises(ValueError, match=r"expecting query embedding dimension of 16 \(embed_dim"):
        module(wrong, k, v)
    with pytest.raises(ValueError, match=r"expecting key embedding dimension of 12 \(kdim"):
        module(q, wrong, v)
    with pytest.raises(ValueError, match=r"expecting value embedding dimension of 10 \(vdim"):
        module(q, k, wrong)
    with pytest.raises(ValueError, match="same number of dimensions"):
        module(q, k[0], v)


def test_multihead_favor_attention_warns_about_dropout_favor_cannot_apply():
    with pytest.warns(AttentionDropoutWarning, match=r"dropout \(0.1\)") as record:
        module = MultiheadFavorAttention(16, 4, dropout=0.1)
    assert record[0].filename == __file__  # points at the code that built it
    with pytest.warns(AttentionDropoutWarning) as record:
        MultiheadFavorAttention.from_multihead_attention(_mha(dropout=0.1))
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiheadFavorAttention(16, 4, dropout=0.1, attention="exact")  # exact attention applies it
        MultiheadFavorAttention(16, 4)
    assert module.dropout == 0.1  # kept for the exact backend


# ---------------------------------------------------------------- replacing nn.MultiheadAttention in a model


def _encoder(causal_batch_first=True):
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True, dtype=DT)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("grad", [True, False])
def test_replace_multihead_attention_exact_reproduces_the_model(grad):
    original = _encoder().train(grad)
    replaced = _encoder().train(grad)
    replace_multihead_attention(replaced, FavorConfig(16), attention="exact")
    modules = [m for m in replaced.modules() if isinstance(m, MultiheadFavorAttention)]
    assert len(modules) == 2 and not any(isinstance(m, nn.MultiheadAttention) for m in replaced.modules())
    assert [m.favor.layer_index for m in modules] == [0, 1]
    x = torch.randn(3, 8, 16, dtype=DT, generator=generator(9))
    mask = padding(b=3, length=8, pads=(0, 2, 5))
    causal = nn.Transformer.generate_square_subsequent_mask(8, dtype=DT)
    with torch.set_grad_enabled(grad):
        for kwargs in ({}, {"src_key_padding_mask": mask}, {"mask": causal, "is_causal": True}):
            expected = original(x, **kwargs)
            out = replaced(x, **kwargs)
            if "src_key_padding_mask" in kwargs and not grad:
                # the nested-tensor fast path of the original zeroes padded positions
                keep = ~mask[..., None]
                expected, out = expected * keep, out * keep
            torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_replace_multihead_attention_names_each_module_whose_dropout_is_dropped():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.1, batch_first=True, dtype=DT)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        replace_multihead_attention(model, FavorConfig(8))
    messages = [str(w.message) for w in record if issubclass(w.category, AttentionDropoutWarning)]
    # One warning per module, with its name (the new modules' own warnings are not repeated).
    assert [m.split(":")[0] for m in messages] == ["layers.0.self_attn", "layers.1.self_attn"]


def test_replace_multihead_attention_favor_backend_runs_and_switches():
    model = replace_multihead_attention(_encoder(), FavorConfig(32, seed=1))
    x = torch.randn(2, 8, 16, dtype=DT, generator=generator(10))
    mask = padding(length=8, pads=(0, 3))
    out = model(x, src_key_padding_mask=mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    replace_multihead_attention(model, attention="exact")
    assert all(m.attention == "exact" for m in model.modules() if isinstance(m, MultiheadFavorAttention))
    with pytest.raises(ValueError, match="only its backend"):
        replace_multihead_attention(model, FavorConfig(8))


def test_modules_deepcopy_and_pickle_with_registry_kernels():
    import copy
    import io

    module = FavorAttention(8, FavorConfig(None, "relu"))  # registry entry built from a lambda
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    q, k, v = qkv()
    restored = torch.load(buffer, weights_only=False)
    for other in (restored, copy.deepcopy(module)):
        assert other.kernel.name == "relu"
        assert torch.equal(other(q.float(), k.float(), v.float()), module(q.float(), k.float(), v.float()))


def test_favor_attention_says_is_causal_and_reads_sdpa_masks_and_grouped_heads():
    module = FavorAttention(8, FavorConfig(16), dtype=DT)
    q, k, v = qkv()
    mask = padding()
    expected = favor_attention(q, k, v, module.projection, is_causal=True, key_padding_mask=mask)
    torch.testing.assert_close(module(q, k, v, is_causal=True, key_padding_mask=mask), expected)
    # SDPA's boolean mask (True = attend), here key padding with the causal triangle.
    triangle = torch.ones(13, 13, dtype=torch.bool).tril()
    torch.testing.assert_close(module(q, k, v, attn_mask=~mask[:, None, None, :] & triangle), expected)
    with pytest.deprecated_call(match=r"FavorAttention.forward\(causal=...\) is deprecated"):
        old = module(q, k, v, causal=True, key_padding_mask=mask)
    torch.testing.assert_close(old, expected)
    # Grouped-query attention: 3 query heads on 1 key/value head.
    one_k, one_v = k[:, :1], v[:, :1]
    grouped = module(q, one_k, one_v, enable_gqa=True)
    torch.testing.assert_close(grouped, module(q, one_k.expand_as(k), one_v.expand_as(v)))


def test_exact_attention_helpers_say_is_causal():
    q, k, v = qkv()
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(sdpa_attention(q, k, v, is_causal=True), full)
    with pytest.deprecated_call(match="sdpa_attention"):
        torch.testing.assert_close(sdpa_attention(q, k, v, causal=True), full)
    with pytest.raises(TypeError, match="not both"):
        sdpa_attention(q, k, v, is_causal=True, causal=True)
