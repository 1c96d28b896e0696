"""Local (sliding-window) attention: the blocked O(L·W) path against the naive band-masked SDPA
beside it (outputs and gradients, float64), the band itself against its definition, the
``"local"`` model backend (decoding from a key/value cache equals the parallel pass; saved
configs keep the window; configs of older formats load), and its errors."""

import json

import pytest
import torch

from performers import PerformerConfig, PerformerForCausalLM, from_pretrained
from performers.layers import FavorConfig
from performers.layers.attention import PerformerSelfAttention
from performers.layers.local import band_bias, local_attention, local_attention_reference

CASES = [(37, 5), (40, 8), (9, 4), (3, 1), (64, 16), (17, 17)]


def _inputs(length, batch=2, heads=3, dim=4, dv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, heads, length, dv, generator=g, dtype=torch.float64)
    return q, k, v


def _padding(batch, length):
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[0, -3:] = True  # right padding
    mask[1, : min(7, length - 1)] = True  # left padding: early causal queries see nothing
    return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("length", "window"), CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_blocked_path_equals_the_band_masked_reference_with_gradients(causal, length, window, padded):
    q, k, v = (x.requires_grad_() for x in _inputs(length))
    mask = _padding(2, length) if padded else None
    fast = local_attention(q, k, v, window=window, is_causal=causal, key_padding_mask=mask)
    slow = local_attention_reference(q, k, v, window=window, causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    grad = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, (q, k, v), grad)
    slow_grads = torch.autograd.grad(slow, (q, k, v), grad)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.isfinite(fast).all()


def test_band_is_the_definition_and_a_window_as_long_as_the_sequence_is_exact_attention():
    bias = band_bias(6, 6, 2, causal=True)
    visible = torch.isfinite(bias)
    for i in range(6):
        for j in range(6):
            assert bool(visible[i, j]) == (i - 2 < j <= i)
    both = torch.isfinite(band_bias(6, 6, 2, causal=False))
    assert all(bool(both[i, j]) == (abs(i - j) < 2) for i in range(6) for j in range(6))
    q, k, v = _inputs(30)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(local_attention(q, k, v, window=30, is_causal=True), full)


def test_gradcheck_float64():
    q, k, v = (x[:1, :1, :, :3].clone().requires_grad_() for x in _inputs(11))
    assert torch.autograd.gradcheck(
        lambda a, b, c: local_attention(a, b, c, window=3, is_causal=True), (q, k, v)
    )
    assert torch.autograd.gradcheck(lambda a, b, c: local_attention(a, b, c, window=2), (q, k, v))


def test_memory_is_linear_in_length_not_quadratic():
    """The blocked path never builds an L × L score matrix: its largest saved tensor is (L/W)·W·2W."""
    q, k, v = (x.float().requires_grad_() for x in _inputs(4096, batch=1, heads=1, dim=8, dv=8))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        local_attention(q, k, v, window=32, is_causal=True)
    assert max(sizes) < 4096 * 4096 // 8  # far below one L×L matrix (16.8M elements)
    assert max(sizes) <= 4 * 4096 * 3 * 32  # O(L·W)


def _model(attention="local", window=4):
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=11,
        d_model=16,
        num_layers=2,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=40,
        dropout=0.0,
        attention=attention,
        attention_window=window,
        favor=FavorConfig(num_features=8),
    )
    return PerformerForCausalLM(config).eval()


def test_local_model_decoding_from_a_cache_equals_the_parallel_pass():
    model = _model()
    ids = torch.randint(0, 11, (2, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(6, 15):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    exact = _model("exact")
    with torch.no_grad():  # a window shorter than the sequence changes the result
        assert not torch.allclose(exact(ids).logits, full, atol=1e-4)
    generated = model.generate(ids[:, :3], max_new_tokens=5)
    assert generated.shape == (2, 8)


def test_the_window_is_saved_and_older_configs_load_without_it(tmp_path):
    model = _model(window=3)
    model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config.attention == "local" and loaded.config.attention_window == 3
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    raw["config_format"], raw["attention"] = 4, "favor"
    del raw["attention_window"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    old = from_pretrained(tmp_path / "m").config  # format 4 had no window: the default, unused
    assert (old.attention, old.attention_window) == ("favor", 256)


def test_local_attention_refuses_cross_attention_and_extra_masks_also_when_decoding():
    from performers.layers.attention import PerformerCrossAttention
    from performers.layers.kv_cache import KVCache

    cross = PerformerCrossAttention(8, 2, attention="local", window=2)
    x = torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="PerformerCrossAttention got keys from another sequence"):
        cross(x, x)
    layer = PerformerSelfAttention(8, 2, attention="local", window=2)
    q = torch.randn(1, 2, 1, 4)
    cache = KVCache(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))
    bias = torch.zeros(1, 1, 1, 4)
    with pytest.raises(ValueError, match="got an attn_bias"):
        layer._attend(q, q, q, is_causal=True, attn_bias=bias, cache=cache)
    with pytest.raises(ValueError, match="got an attn_bias"):
        layer._attend(q, q, q, is_causal=True, attn_bias=bias[..., :1])


def test_one_decoded_token_reads_only_the_last_window_keys():
    from performers.layers.kv_cache import KVCache

    layer = PerformerSelfAttention(8, 2, attention="local", window=3).eval()
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 2, 9, 4, generator=g), torch.randn(1, 2, 9, 4, generator=g)
    q = torch.randn(1, 2, 1, 4, generator=g)
    out, cache = layer._attend(
        q, k[:, :, 8:], v[:, :, 8:], is_causal=True, cache=KVCache(k[:, :, :8], v[:, :, :8])
    )
    expected = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, 6:], v[:, :, 6:])
    torch.testing.assert_close(out, expected)
    assert cache.length == 9  # the cache keeps every key; the step reads the last 3


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        local_attention(*_inputs(8), window=0)
    q, k, v = _inputs(8)
    with pytest.raises(ValueError, match="one length"):
        local_attention(q, k[:, :, :5], v[:, :, :5], window=2)
    with pytest.raises(ValueError, match="attention_window must be >= 1"):
        PerformerConfig(attention="local", attention_window=0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        PerformerSelfAttention(8, 2, attention="local", window=0)
