"""Packed batches of ``embed``, ``score`` and ``evaluate`` (:mod:`performers.jobs.packing`): the
batching rule, and packed results equal to the padded ones — every embedding kind and layer,
causal log-likelihoods, evaluation summaries and rows — on tiny random models, bidirectional
and causal, with proteins of mixed lengths down to one residue."""

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from performers.jobs import packing
from performers.jobs.embedding import extract_representations
from performers.jobs.packing import (
    PackingError,
    cu_seqlens_of,
    pack_rows,
    packed_batches,
    resolve_pack,
    segment_ids,
    takes_packed_input,
    unpack_rows,
)
from performers.jobs.protein_evaluation import evaluate_proteins
from performers.jobs.protein_lm import PerformerProteinLM
from performers.jobs.scoring import score_proteins, sequence_log_likelihoods, variant_effects
from tests.jobs.test_embedding import TOKENIZER, tiny_model

# Mixed lengths, one residue included; with MAX_TOKENS 24 they fill three packed rows (16 + 3,
# then the 29-residue protein alone, 31 tokens being over the budget, then 6 + 4 + 10).
PROTEINS = [
    ("P1", "MKVLAAGIVGLLLA"),
    ("P2", "M"),
    ("P3", "ACDEFGHIKLMNPQRSTVWYACDEFGHIK"),
    ("P4", "WWYQ"),
    ("P5", "KT"),
    ("P6", "GGSGGSLV"),
]
MAX_TOKENS = 24


def tolerance(dtype: torch.dtype, reference: Tensor) -> float:
    """Packed and padded runs differ in summation order only: a few hundred roundings of the
    dtype, relative to the largest value compared."""
    return 256 * torch.finfo(dtype).eps * max(1.0, float(reference.abs().max()))


def assert_close(got: Tensor, expected: Tensor) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    bound = tolerance(expected.dtype, expected)
    assert float((got - expected).abs().max()) <= bound


class ForeignLM:
    """A ProteinLM that is not one of this package's models (as a Hugging Face adapter): it
    takes no packed input."""

    def __init__(self, inner: PerformerProteinLM) -> None:
        self.inner = inner
        self.tokenizer, self.num_layers, self.is_causal = inner.tokenizer, inner.num_layers, inner.is_causal
        self.residue_limit, self.device = inner.residue_limit, inner.device

    def logits(self, input_ids, attention_mask):
        return self.inner.logits(input_ids, attention_mask)

    def hidden_states(self, input_ids, attention_mask):
        return self.inner.hidden_states(input_ids, attention_mask)


def test_packed_batches_fill_rows_in_order_up_to_the_budget():
    lengths = [5, 3, 9, 2, 12, 1, 1]
    rows = packed_batches(lengths, 10)
    assert rows == [[0, 1], [2], [3], [4], [5, 6]]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:  # within budget, unless one item alone is longer
        assert sum(lengths[i] for i in row) <= 10 or len(row) == 1
    assert packed_batches([], 4) == []
    with pytest.raises(ValueError, match="max_tokens must be a positive int, got 0"):
        packed_batches([1], 0)


def test_pack_rows_and_unpack_rows_are_inverse_on_the_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    rows = torch.arange(24.0).reshape(3, 4, 2)
    packed, cu_seqlens = pack_rows(rows, mask)
    assert cu_seqlens.tolist() == [0, 3, 4, 8] and cu_seqlens.dtype == torch.int32
    assert packed.shape == (1, 8, 2)
    assert torch.equal(packed[0, 3], rows[1, 0]) and torch.equal(packed[0, 4:], rows[2])
    back = unpack_rows(packed, mask, fill=-1.0)
    assert torch.equal(back[mask.bool()], rows[mask.bool()])
    assert bool((back[~mask.bool()] == -1).all())
    assert segment_ids(cu_seqlens).tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert cu_seqlens_of([]).tolist() == [0]


def test_pack_none_packs_performers_models_only_and_true_refuses_others():
    model = tiny_model()
    lm = PerformerProteinLM(model, TOKENIZER)
    assert takes_packed_input(model) and takes_packed_input(lm)
    assert resolve_pack(None, lm) is True and resolve_pack(False, lm) is False
    foreign = ForeignLM(lm)
    assert not takes_packed_input(foreign) and resolve_pack(None, foreign) is False
    with pytest.raises(PackingError, match=r"pack=True \(--pack\): this model .* does not take packed"):
        resolve_pack(True, foreign)
    with pytest.raises(TypeError, match="pack must be True, False or None"):
        resolve_pack("yes", lm)


def _spy(monkeypatch, module, name: str) -> list:
    """Count the calls of ``module.name`` (the function stays the same)."""
    calls = []
    original = getattr(module, name)

    def spied(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spied)
    return calls


@pytest.mark.parametrize("attention", ["favor", "exact"])
@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_packed_embeddings_equal_padded_for_every_kind_and_layer(task, attention, monkeypatch):
    torch.set_num_threads(1)
    model = tiny_model(task, attention)
    from performers.jobs import embedding

    calls = _spy(monkeypatch, embedding, "packed_hidden_states")
    options = {"repr_layers": [0, 1, -1], "include": ["mean", "per_tok", "bos"], "max_tokens": MAX_TOKENS}
    packed = extract_representations(model, TOKENIZER, PROTEINS, progress=False, **options)
    assert len(calls) == len(packed_batches([len(s) + 2 for _, s in PROTEINS], MAX_TOKENS)) == 3
    padded = extract_representations(model, TOKENIZER, PROTEINS, progress=False, pack=False, **options)
    assert len(calls) == 3  # pack=False never reaches the packed pass
    assert list(packed) == list(padded) == [name for name, _ in PROTEINS]
    for name, sequence in PROTEINS:
        for kind in ("mean", "per_tok", "bos"):
            assert sorted(packed[name][kind]) == [0, 1, 2]
            for layer in (0, 1, 2):
                assert_close(packed[name][kind][layer], padded[name][kind][layer])
        assert packed[name]["per_tok"][2].shape == (len(sequence), 16)


def test_float32_packed_embeddings_agree_within_float32_rounding():
    torch.set_num_threads(1)
    model = tiny_model().float()
    options = {"repr_layers": [0, -1], "include": ["mean", "per_tok", "bos"], "max_tokens": MAX_TOKENS}
    packed = extract_representations(model, TOKENIZER, PROTEINS, progress=False, **options)
    padded = extract_representations(model, TOKENIZER, PROTEINS, progress=False, pack=False, **options)
    for name, _ in PROTEINS:
        for kind in ("mean", "per_tok", "bos"):
            assert_close(packed[name][kind][2], padded[name][kind][2])
            assert torch.equal(packed[name][kind][0], padded[name][kind][0])  # no attention yet


def test_a_foreign_model_embeds_padded_under_pack_none_and_refuses_pack_true():
    lm = PerformerProteinLM(tiny_model(), TOKENIZER)
    foreign = ForeignLM(lm)
    got = extract_representations(foreign, None, PROTEINS, max_tokens=MAX_TOKENS, progress=False)
    expected = extract_representations(lm, None, PROTEINS, max_tokens=MAX_TOKENS, progress=False)
    for name, _ in PROTEINS:
        assert_close(got[name]["mean"][2], expected[name]["mean"][2])
    with pytest.raises(PackingError):
        extract_representations(foreign, None, PROTEINS, progress=False, pack=True)
    with pytest.raises(PackingError):
        score_proteins(ForeignLM(PerformerProteinLM(tiny_model("clm"), TOKENIZER)), None, PROTEINS, pack=True)


def _scores(rows: Sequence[dict]) -> Tensor:
    return torch.tensor([row["log_likelihood"] for row in rows], dtype=torch.float64)


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_packed_causal_log_likelihoods_equal_padded_and_the_sum_over_each_protein(attention, monkeypatch):
    torch.set_num_threads(1)
    model = tiny_model("clm", attention)
    calls = _spy(monkeypatch, packing, "evaluation_mode")
    packed = score_proteins(model, TOKENIZER, PROTEINS, max_tokens=MAX_TOKENS, progress=False)
    assert len(calls) == 3  # one packed pass per row
    padded = score_proteins(model, TOKENIZER, PROTEINS, max_tokens=MAX_TOKENS, progress=False, pack=False)
    assert len(calls) == 3
    assert [r["terms"] for r in packed] == [r["terms"] for r in padded] == [len(s) + 1 for _, s in PROTEINS]
    assert_close(_scores(packed), _scores(padded))
    # Each protein alone, summed by hand: a boundary never lets one protein predict the next.
    for (_, sequence), row in zip(PROTEINS, packed, strict=True):
        ids = torch.tensor(TOKENIZER.encode(sequence))[None]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        alone = log_probs.gather(-1, ids[0, 1:, None]).sum()
        assert abs(row["log_likelihood"] - float(alone)) <= tolerance(torch.float64, alone)


def test_float32_packed_log_likelihoods_agree_within_float32_rounding():
    torch.set_num_threads(1)
    model = tiny_model("clm").float()
    sequences = [s for _, s in PROTEINS]
    packed = torch.tensor(sequence_log_likelihoods(model, TOKENIZER, sequences, max_tokens=MAX_TOKENS))
    padded = sequence_log_likelihoods(model, TOKENIZER, sequences, max_tokens=MAX_TOKENS, pack=False)
    assert_close(packed, torch.tensor(padded))


def test_variant_scores_and_pseudo_log_likelihoods_never_pack(monkeypatch):
    calls = _spy(monkeypatch, packing, "evaluation_mode")
    clm, mlm = tiny_model("clm"), tiny_model("mlm")
    variant_effects(clm, TOKENIZER, "MKVLAAG", ["MKVLAAW", "AKVLAAG"], progress=False)
    score_proteins(mlm, TOKENIZER, PROTEINS[:2], progress=False, pack=True)  # pseudo: documented
    assert calls == []


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_packed_evaluation_equals_padded_in_aggregate_and_per_protein(task, monkeypatch):
    torch.set_num_threads(1)
    model = tiny_model(task)
    sequences = [s for _, s in PROTEINS]
    ids = [name for name, _ in PROTEINS]
    options = {"batch_size": 4, "mask_prob": 0.5, "seed": 3}
    from performers.jobs import protein_evaluation

    calls = _spy(monkeypatch, protein_evaluation, "pack_rows")
    packed = evaluate_proteins(model, TOKENIZER, sequences, ids, **options)
    assert len(calls) == 2  # the same two batches of four and two proteins
    padded = evaluate_proteins(model, TOKENIZER, sequences, ids, pack=False, **options)
    assert len(calls) == 2
    assert packed.crop.skipped == padded.crop.skipped
    assert [r["id"] for r in packed.rows] == [r["id"] for r in padded.rows]
    assert len(packed.rows) >= 4  # enough proteins scored for the comparison to mean something
    for got, expected in zip(packed.rows, padded.rows, strict=True):
        assert got["tokens"] == expected["tokens"] and got["accuracy"] == expected["accuracy"]
        assert abs(got["loss"] - expected["loss"]) <= tolerance(torch.float64, torch.tensor(expected["loss"]))
    assert packed.summary["tokens"] == padded.summary["tokens"]
    assert packed.summary["accuracy"] == padded.summary["accuracy"]
    loss = torch.tensor(padded.summary["loss"])
    assert abs(packed.summary["loss"] - padded.summary["loss"]) <= tolerance(torch.float64, loss)


def test_evaluating_a_foreign_module_with_pack_true_is_refused():
    class Wrapped(torch.nn.Module):  # a model that is none of this package's
        def __init__(self):
            super().__init__()
            self.inner = tiny_model()
            self.config = self.inner.config  # its positions, for the cropping rule

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids, attention_mask)

    with pytest.raises(PackingError, match="Wrapped"):
        evaluate_proteins(Wrapped(), TOKENIZER, ["MKV", "WW"], pack=True)
    evaluation = evaluate_proteins(Wrapped(), TOKENIZER, ["MKVLAAGIVG", "WWYQKT"], mask_prob=0.5)
    assert evaluation.summary["proteins"] >= 1  # pack=None: padded, as before


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_the_trainers_validation_runs_packed_with_the_padded_numbers(task, monkeypatch):
    # evaluate_model is the trainer's validation and test metric (fixed batches of a run's crop).
    torch.set_num_threads(1)
    from performers.jobs import protein_evaluation
    from performers.jobs.protein_evaluation import evaluate_model

    model = tiny_model(task)
    sequences = [s for _, s in PROTEINS]
    options = {"task": task, "max_length": 16, "batch_size": 4, "mask_prob": 0.5, "seed": 3}
    calls = _spy(monkeypatch, protein_evaluation, "pack_rows")
    packed = evaluate_model(model, TOKENIZER, sequences, **options)
    assert len(calls) == 2  # the fixed batches of four and two proteins, each packed
    padded = evaluate_model(model, TOKENIZER, sequences, pack=False, **options)
    assert len(calls) == 2
    assert packed["tokens"] == padded["tokens"] and packed["accuracy"] == padded["accuracy"]
    perplexity = torch.tensor(padded["perplexity"])
    assert abs(packed["perplexity"] - padded["perplexity"]) <= tolerance(torch.float64, perplexity)
    with pytest.raises(PackingError, match="does not take packed input"):
        evaluate_model(torch.nn.Linear(2, 2), TOKENIZER, sequences, pack=True, **options)
