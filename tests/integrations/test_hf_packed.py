"""Packed batches (``DataCollatorWithFlattening``) through the ``"favor"`` Hugging Face backend.

A packed row of three sequences must give, position for position, what each sequence gives run
alone through the same model object (same projections): FAVOR+ runs per sequence. The same
comparison under ``sdpa`` checks the harness (HF's own packing). Packing that the backend cannot
run (a cache, several rows, padding) is a clear ``ValueError``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import DataCollatorWithFlattening
from transformers.masking_utils import (
    AttentionMaskInterface,
    and_masks,
    causal_mask_function,
    sliding_window_overlay,
)

from performers import FavorConfig
from performers.integrations import transformers as hf
from performers.integrations.hf_masks import PackedMask, favor_mask
from tests.integrations.test_esm import _model as _esm_model
from tests.integrations.test_transformers import BUILDERS, VOCAB

LENGTHS = (5, 3, 7)
# float64 end to end: packed and per-sequence runs do the same arithmetic on the same slices up
# to summation order, so they agree to a few ulps of O(1) outputs.
TOL = 1e-10
DECODERS = ("gpt2", "llama")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny ops on a shared machine (conftest restores the count)


def _builders():
    return {**BUILDERS, "esm": lambda: _esm_model("EsmModel", "rotary")}


def _sequences(low: int = 4, high: int = 24) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(low, high, (n,), generator=gen) for n in LENGTHS]


def _cu() -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)


def _packed(sequences, **options):
    return DataCollatorWithFlattening(**options)([{"input_ids": s.tolist()} for s in sequences])


def _out(model, ids, position_ids, **kwargs):
    out = model(ids, position_ids=position_ids, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _packed_vs_alone(model, family, sequences, **collator):
    # Decoders: no cache, or HF builds no packed mask. Each sequence alone gets the positions
    # 0, 1, ... that the collator writes (ESM/BERT would otherwise number them their own way).
    kwargs = {"use_cache": False} if family in DECODERS else {}
    batch = _packed(sequences, **collator)
    extra = {k: batch[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k") if k in batch}
    packed = _out(model, batch["input_ids"], batch["position_ids"], **kwargs, **extra)
    alone = torch.cat([_out(model, s[None], torch.arange(len(s))[None], **kwargs) for s in sequences], dim=1)
    return packed, alone


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "roberta", "esm"])
def test_packed_batch_equals_each_sequence_alone(family):
    model = _builders()[family]().double()
    high = VOCAB if family != "esm" else 24
    sequences = _sequences(high=high)
    exact_packed, exact_alone = _packed_vs_alone(model, family, sequences)
    assert (exact_packed - exact_alone).abs().max() < TOL  # the harness: HF's own packing

    hf.performerize(model, FavorConfig(num_features=16, seed=3))
    packed, alone = _packed_vs_alone(model, family, sequences)
    assert packed.shape == (1, sum(LENGTHS), packed.shape[-1])
    assert (packed - alone).abs().max() < TOL
    # FAVOR+ did run (16 features are far from exact softmax attention).
    assert (packed - exact_packed).abs().max() > 1e-4


@pytest.mark.parametrize("family", DECODERS)
def test_flash_attention_kwargs_agree_with_position_ids(family):
    model = hf.performerize(_builders()[family]().double(), FavorConfig(num_features=16))
    sequences = _sequences()
    packed, alone = _packed_vs_alone(model, family, sequences, return_flash_attn_kwargs=True)
    assert (packed - alone).abs().max() < TOL


def test_flash_attention_kwargs_alone_pack_the_row():
    # cu_seq_lens_* without restarting position_ids: HF's mask is plain causal, the backend
    # still runs each sequence on its own.
    model = hf.performerize(_builders()["llama"]().double(), FavorConfig(num_features=16))
    sequences = _sequences()
    batch = _packed(sequences, return_flash_attn_kwargs=True, return_position_ids=False)
    packed = model(
        batch["input_ids"],
        use_cache=False,
        cu_seq_lens_q=batch["cu_seq_lens_q"],
        cu_seq_lens_k=batch["cu_seq_lens_k"],
    ).logits
    # Positions run on across the row (none were given), so compare with the same positions.
    offsets = [0, *torch.tensor(LENGTHS).cumsum(0).tolist()]
    alone = torch.cat(
        [
            _out(model, s[None], torch.arange(a, b)[None], use_cache=False)
            for s, a, b in zip(sequences, offsets[:-1], offsets[1:], strict=True)
        ],
        dim=1,
    )
    assert (packed - alone).abs().max() < TOL


def test_packing_that_cannot_run_is_refused():
    model = hf.performerize(_builders()["llama"]().double(), FavorConfig(num_features=16))
    batch = _packed(_sequences())
    ids, positions = batch["input_ids"], batch["position_ids"]
    with pytest.raises(ValueError, match="use_cache=False"):
        model(ids, position_ids=positions)  # a DynamicCache: HF builds no packed mask
    with pytest.raises(ValueError, match="one row"):
        model(ids.expand(2, -1), position_ids=positions.expand(2, -1), use_cache=False)
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(
            ids,
            use_cache=False,
            cu_seq_lens_q=torch.tensor([0, 5, 15], dtype=torch.int32),
            cu_seq_lens_k=torch.tensor([0, 5, 8, 15], dtype=torch.int32),
        )
    with pytest.raises(ValueError, match="disagrees"):
        model(
            ids,
            position_ids=positions,
            use_cache=False,
            cu_seq_lens_q=torch.tensor([0, 5, 15], dtype=torch.int32),
            cu_seq_lens_k=torch.tensor([0, 5, 15], dtype=torch.int32),
        )


def test_packing_with_a_favor_cache_or_a_padding_mask_is_refused():
    model = hf.performerize(_builders()["llama"]().double(), FavorConfig(num_features=16))
    batch = _packed(_sequences())
    ids, positions = batch["input_ids"], batch["position_ids"]
    cache = hf.FavorCache()
    with pytest.raises(ValueError, match="no packed mask"):
        model(ids, position_ids=positions, cache=cache)
    assert cache.get_seq_length() == 0  # the refused call changed nothing: the cache still serves
    model(ids[:, :4], cache=cache)
    assert cache.get_seq_length() == 4
    pad = torch.ones_like(ids)
    pad[0, -1] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(
            ids,
            attention_mask=pad,
            use_cache=False,
            cu_seq_lens_q=_cu(),
            cu_seq_lens_k=_cu(),
        )


def test_packed_gradients_equal_the_per_sequence_gradients():
    # Training on packed rows is training on the sequences: the gradient of the summed outputs
    # of a packed row is the sum of the per-sequence gradients.
    model = hf.performerize(_builders()["llama"]().double(), FavorConfig(num_features=16))
    sequences = _sequences()
    batch = _packed(sequences)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    packed = grads(_out(model, batch["input_ids"], batch["position_ids"], use_cache=False).pow(2).sum())
    alone = grads(
        sum(_out(model, s[None], torch.arange(len(s))[None], use_cache=False).pow(2).sum() for s in sequences)
    )
    assert len(packed) == len(alone) > 0
    for a, b in zip(packed, alone, strict=True):
        assert (a - b).abs().max() <= TOL * (1 + b.abs().max())


def test_the_mask_function_hands_on_the_boundaries():
    model = hf.performerize(_builders()["gpt2"]().double(), FavorConfig(num_features=16))
    batch = _packed(_sequences())
    seen = []
    original = hf.favor_mask

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    AttentionMaskInterface.register(hf.ATTENTION_NAME, spy)
    try:
        model(batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    finally:
        hf.register()
    assert isinstance(seen[0], PackedMask)
    assert seen[0].cu_seqlens.tolist() == _cu().tolist()
    with pytest.raises(ValueError, match="cannot represent"):  # another overlay stays refused
        favor_mask(1, 6, 6, mask_function=and_masks(causal_mask_function, sliding_window_overlay(2)))
