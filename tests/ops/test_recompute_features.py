"""recompute_features: the fused bidirectional path keeps no (B, H, L, M) query-feature tensor
for backward, with bit-identical outputs and gradients; FavorConfig carries it (format 4)."""

import pytest
import torch

from performers import (
    FavorConfig,
    PerformerConfig,
    PerformerForMaskedLM,
    favor_attention,
    orthogonal_projection,
)
from performers.layers.favor_config import favor_config_from_saved
from tests.helpers.numerics import generator


def _saved_sizes(fn):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recomputed_query_features_give_identical_gradients_and_keep_no_l_m_tensor(dtype):
    g = generator(0)
    length, m, d = 300, 64, 16
    q, k, v = (torch.randn(2, 3, length, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    w = orthogonal_projection(m, d, generator=g)
    results = {}
    for recompute in (False, True):
        out, sizes = _saved_sizes(
            lambda r=recompute: favor_attention(q, k, v, w, block_size=64, recompute_features=r)
        )
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        results[recompute] = out, grads, max(sizes)
    assert torch.equal(results[False][0], results[True][0])
    for kept, recomputed in zip(results[False][1], results[True][1], strict=True):
        assert torch.equal(kept, recomputed)
    features = 2 * 3 * length * m
    assert results[False][2] >= features  # kept: the (B, H, L, M) query features
    assert results[True][2] < features // 2  # recomputed: nothing of that size


def test_favor_config_carries_recompute_features_and_older_formats_read_false():
    config = FavorConfig(recompute_features=True)
    assert FavorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError, match="recompute_features must be a bool"):
        FavorConfig(recompute_features="yes")
    older = {k: v for k, v in FavorConfig().to_dict().items() if k != "recompute_features"}
    assert favor_config_from_saved(older, format=3).recompute_features is False
    # A model with the option: same logits and gradients, the query features no longer kept.
    ids = torch.randint(0, 25, (2, 96), generator=generator(1))
    runs = []
    for recompute in (False, True):
        torch.manual_seed(0)
        favor = FavorConfig(64, recompute_features=recompute)
        model = PerformerForMaskedLM(
            PerformerConfig(vocab_size=25, d_model=16, num_layers=1, num_heads=2, d_ff=32, favor=favor)
        )
        logits, sizes = _saved_sizes(lambda m=model: m(ids).logits)
        logits.square().sum().backward()
        runs.append((logits, [p.grad for p in model.parameters()], sizes.count(2 * 2 * 96 * 64)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert runs[0][2] >= 1 and runs[1][2] == 0  # the (B, H, L, M) tensor: kept, then not
