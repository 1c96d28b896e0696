"""Packed sequences in the models: one row of sequences end to end equals each sequence alone.

Float64 throughout, so the packed and unpacked computations (which differ only in how the
positions are grouped into calls) agree to rounding; FAVOR+ and exact attention, learned and
rotary positions, masked and causal LM, outputs and parameter gradients.
"""

from __future__ import annotations

import pytest
import torch

from performers import FavorConfig
from performers.layers import cu_seqlens_from_position_ids
from performers.models import PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM, PerformerModel

LENGTHS = (5, 1, 7)  # a one-token sequence too: its attention is itself alone
TOL = {"rtol": 1e-9, "atol": 1e-10}


def _config(attention: str, position: str, **overrides) -> PerformerConfig:
    fields = dict(
        vocab_size=11,
        d_model=8,
        num_layers=2,
        num_heads=2,
        d_ff=16,
        max_position_embeddings=16,
        position=position,
        dropout=0.0,
        attention=attention,
        favor=FavorConfig(num_features=16, seed=3),
    )
    fields.update(overrides)
    return PerformerConfig(**fields)


def _model(cls, attention: str, position: str):
    torch.manual_seed(0)
    return cls(_config(attention, position)).double()


def _sequences() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 11, (1, n), generator=generator) for n in LENGTHS]


def _cu_seqlens() -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


CASES = [(a, p) for a in ("favor", "exact") for p in ("learned", "rotary")]


@pytest.mark.parametrize(("attention", "position"), CASES)
def test_encoder_packed_equals_each_sequence_alone(attention: str, position: str) -> None:
    model = _model(PerformerModel, attention, position)
    sequences = _sequences()
    packed = model(torch.cat(sequences, dim=1), cu_seqlens=_cu_seqlens()).last_hidden_state
    packed.square().sum().backward()
    packed_grads = _grads(model)
    model.zero_grad()
    alone = [model(ids).last_hidden_state for ids in sequences]
    torch.cat(alone, dim=1).square().sum().backward()
    torch.testing.assert_close(packed, torch.cat(alone, dim=1), **TOL)
    for got, want in zip(packed_grads, _grads(model), strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize(("attention", "position"), CASES)
@pytest.mark.parametrize("cls", [PerformerForMaskedLM, PerformerForCausalLM])
def test_lm_packed_loss_equals_padded_batch(cls, attention: str, position: str) -> None:
    """The loss is the mean over real labelled tokens, whether the sequences are packed or padded."""
    model = _model(cls, attention, position)
    sequences = _sequences()
    generator = torch.Generator().manual_seed(2)
    labels = [torch.where(torch.rand(s.shape, generator=generator) < 0.6, s, -100) for s in sequences]
    packed = model(torch.cat(sequences, 1), labels=torch.cat(labels, 1), cu_seqlens=_cu_seqlens())
    packed.loss.backward()
    packed_grads = _grads(model)
    model.zero_grad()
    width = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    padded_labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (s, lab) in enumerate(zip(sequences, labels, strict=True)):
        ids[row, : s.shape[1]], padded_labels[row, : s.shape[1]], mask[row, : s.shape[1]] = s, lab, 1
    padded = model(ids, attention_mask=mask, labels=padded_labels)
    padded.loss.backward()
    torch.testing.assert_close(packed.loss, padded.loss, **TOL)
    real = mask.bool()
    torch.testing.assert_close(packed.logits[0], padded.logits[real], **TOL)
    for got, want in zip(packed_grads, _grads(model), strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_causal_lm_loss_does_not_cross_boundaries() -> None:
    """Predicting a sequence's first token from the previous sequence is not counted."""
    model = _model(PerformerForCausalLM, "favor", "rotary")
    ids = torch.cat(_sequences(), 1)
    out = model(ids, labels=ids, cu_seqlens=_cu_seqlens())
    alone = [model(s, labels=s) for s in _sequences()]
    # Mean over the predicted tokens: L - 1 per sequence (the one-token sequence has none).
    counts = [n - 1 for n in LENGTHS]
    expected = sum(o.loss * c for o, c in zip(alone, counts, strict=True) if c) / sum(counts)
    torch.testing.assert_close(out.loss, expected, **TOL)


@pytest.mark.parametrize("cls", [PerformerForMaskedLM, PerformerForCausalLM])
def test_restarting_position_ids_pack_as_cu_seqlens(cls) -> None:
    model = _model(cls, "favor", "learned")
    ids = torch.cat(_sequences(), 1)
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    by_positions = model(ids, position_ids=position_ids, labels=ids)
    by_offsets = model(ids, cu_seqlens=_cu_seqlens(), labels=ids)
    torch.testing.assert_close(by_positions.logits, by_offsets.logits, rtol=0, atol=0)
    torch.testing.assert_close(by_positions.loss, by_offsets.loss, rtol=0, atol=0)
    assert cu_seqlens_from_position_ids(position_ids).tolist() == _cu_seqlens().tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cu_seqlens": torch.tensor([0, 3, 6])}, "one packed row"),
        ({"cu_seqlens": torch.tensor([0, 2, 2, 6]), "rows": 1}, "rise strictly"),
        ({"cu_seqlens": torch.tensor([0, 4]), "rows": 1}, "rise strictly"),
        ({"cu_seqlens": torch.tensor([0.0, 6.0]), "rows": 1}, "integer"),
        ({"position_ids": torch.tensor([[0, 1, 2, 1, 2, 3]]), "rows": 1}, "do not describe packed"),
        ({"position_ids": torch.tensor([[0, 1, 3, 0, 1, 2]]), "rows": 1}, "do not describe packed"),
        (
            {"cu_seqlens": torch.tensor([0, 3, 6]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]])},
            "padding mask",
        ),
    ],
)
def test_bad_packing_is_refused(kwargs: dict, message: str) -> None:
    model = _model(PerformerForMaskedLM, "favor", "learned")
    rows = kwargs.pop("rows", 2)
    ids = torch.randint(0, 11, (rows, 6))
    if "attention_mask" in kwargs:
        ids = ids[:1]
    with pytest.raises((ValueError, TypeError), match=message):
        model(ids, **kwargs)


def test_local_attention_packs_per_sequence() -> None:
    model = _model(PerformerModel, "local", "rotary")
    model.set_attention("local")
    sequences = _sequences()
    packed = model(torch.cat(sequences, 1), cu_seqlens=_cu_seqlens()).last_hidden_state
    alone = torch.cat([model(s).last_hidden_state for s in sequences], 1)
    torch.testing.assert_close(packed, alone, **TOL)
