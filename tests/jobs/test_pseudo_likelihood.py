"""Pseudo-log-likelihoods with the masked copies of all proteins packed together
(performers.jobs.pseudo_likelihood): the schedule covers every copy once within the budget, and
the results equal one protein at a time and a naive masking loop, in float64."""

import pytest
import torch

from performers.jobs.pseudo_likelihood import copy_batches, pseudo_log_likelihoods
from performers.jobs.scoring import per_protein_pseudo_log_likelihoods
from tests.jobs.test_embedding import PROTEINS, TOKENIZER, tiny_model
from tests.jobs.test_scoring import naive_pseudo_log_likelihood

# Mixed lengths: 14, 3, 29, 4 and 1 residue(s).
SEQUENCES = [sequence for _, sequence in PROTEINS] + ["W"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("max_tokens", [1, 20, 40, 97, 10_000])
def test_copy_batches_cover_every_copy_once_within_the_budget(max_tokens):
    lengths = [len(s) for s in SEQUENCES]
    batches = list(copy_batches(lengths, max_tokens))
    copies = [copy for batch in batches for copy in batch]
    assert sorted(copies) == sorted((p, r) for p, n in enumerate(lengths) for r in range(n))
    for batch in batches:
        longest = max(lengths[p] + 2 for p, _ in batch)
        assert lengths[batch[0][0]] + 2 == longest  # the first copy is the longest
        assert len(batch) == 1 or len(batch) * longest <= max_tokens
    if max_tokens == 97:
        # Copies of several proteins share a batch: 3 copies of P3 (31 tokens) fit, and its last
        # 2 copies leave room for one of P1.
        assert any(len({p for p, _ in batch}) > 1 for batch in batches)
    # Greedy: a batch is closed only when one more copy would pass the budget.
    for batch in batches[:-1]:
        longest = lengths[batch[0][0]] + 2
        assert (len(batch) + 1) * longest > max_tokens
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        list(copy_batches(lengths, 0))


@pytest.mark.parametrize("attention", ["favor", "exact"])
@pytest.mark.parametrize("max_tokens", [40, 97, 10_000])
def test_packed_equals_one_protein_at_a_time_and_a_naive_loop(attention, max_tokens):
    model = tiny_model("mlm", attention)
    packed = pseudo_log_likelihoods(model, TOKENIZER, SEQUENCES, max_tokens=max_tokens)
    alone = per_protein_pseudo_log_likelihoods(model, TOKENIZER, SEQUENCES, max_tokens=max_tokens)
    # float64 weights and activations: the only difference is the order of the sums.
    assert packed == pytest.approx(alone, rel=1e-12, abs=1e-12)
    if max_tokens == 97:
        naive = [naive_pseudo_log_likelihood(model, s) for s in SEQUENCES]
        assert packed == pytest.approx(naive, rel=1e-12, abs=1e-12)


def test_refuses_a_causal_model():
    with pytest.raises(TypeError, match="masked language model"):
        pseudo_log_likelihoods(tiny_model("clm"), TOKENIZER, SEQUENCES)
