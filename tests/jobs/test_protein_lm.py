""":mod:`performers.jobs.protein_lm`: the interface embedding and scoring take their model
through, this package's models behind it, and a model of another kind plugged in."""

import pytest
import torch

from performers.jobs.embedding import extract_representations
from performers.jobs.protein_lm import PerformerProteinLM, ProteinLM, as_protein_lm
from performers.jobs.scoring import parse_mutations, score_mutants, score_proteins
from performers.proteins import ProteinTokenizer
from tests.jobs.test_embedding import PROTEINS, TOKENIZER, tiny_model


class ToyLM:
    """A ProteinLM that is no Performer (embeddings, one position-wise layer, a linear head):
    what an adapter of another model family looks like."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.tokenizer = ProteinTokenizer()
        vocab, width = len(self.tokenizer), 8
        self.embed = torch.randn(vocab, width, generator=generator, dtype=torch.float64)
        self.weight = torch.randn(width, width, generator=generator, dtype=torch.float64)
        self.head = torch.randn(width, vocab, generator=generator, dtype=torch.float64)
        self.num_layers, self.is_causal, self.residue_limit = 1, False, None
        self.device = torch.device("cpu")

    def hidden_states(self, input_ids, attention_mask):
        first = self.embed[input_ids]
        return first, torch.tanh(first @ self.weight)

    def logits(self, input_ids, attention_mask):
        return self.hidden_states(input_ids, attention_mask)[-1] @ self.head


def test_a_model_of_another_kind_plugs_in():
    toy = ToyLM()
    assert isinstance(toy, ProteinLM) and as_protein_lm(toy) is toy
    name, sequence = PROTEINS[0]
    out = extract_representations(
        toy, None, PROTEINS, repr_layers=[-1, 0], include=["mean", "bos"], progress=False
    )
    ids = torch.tensor([TOKENIZER.encode(sequence)])
    hidden = toy.hidden_states(ids, torch.ones_like(ids))
    for layer in (1, 0):
        torch.testing.assert_close(
            out[name]["mean"][layer], hidden[layer][0, 1:-1].mean(0), rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(out[name]["bos"][layer], hidden[layer][0, 0], rtol=1e-12, atol=1e-12)
    wildtype = "MKVLA"
    (score,) = score_mutants(
        toy, None, wildtype, [parse_mutations("K2W", wildtype)], strategy="wt-marginals", progress=False
    )
    log_probs = torch.log_softmax(toy.logits(torch.tensor([TOKENIZER.encode(wildtype)]), None)[0, 2], dim=-1)
    w, k = (TOKENIZER.encode(r, add_special_tokens=False)[0] for r in "WK")
    assert score == pytest.approx(float(log_probs[w] - log_probs[k]), rel=1e-12)


@torch.no_grad()
def test_this_packages_models_behind_the_interface():
    ids, mask = TOKENIZER.batch_encode(["MKVLA", "MK"])
    for task in ("mlm", "clm"):
        model = tiny_model(task)
        lm = as_protein_lm(model, TOKENIZER)
        assert isinstance(lm, PerformerProteinLM) and lm.is_causal == (task == "clm")
        assert lm.num_layers == 2 and lm.residue_limit == 62 and lm.device == torch.device("cpu")
        torch.testing.assert_close(lm.logits(ids, mask), model(ids, mask).logits, rtol=0, atol=0)
        reference = model(ids, mask, output_hidden_states=True).all_hidden_states
        for mine, theirs in zip(lm.hidden_states(ids, mask), reference, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert as_protein_lm(tiny_model(position="rotary"), TOKENIZER).residue_limit is None
    with pytest.raises(TypeError, match="language model"):
        as_protein_lm(tiny_model("encoder"), TOKENIZER).logits(ids, mask)
    with pytest.raises(TypeError, match="needs its tokenizer"):
        as_protein_lm(tiny_model("mlm"))
    with pytest.raises(TypeError, match="or a ProteinLM"):
        as_protein_lm(torch.nn.Linear(2, 2), TOKENIZER)


def test_per_sequence_scores_of_a_protein_lm_equal_those_of_the_model():
    model = tiny_model("mlm")
    direct = score_proteins(model, TOKENIZER, PROTEINS, max_length=8, progress=False)
    wrapped = score_proteins(as_protein_lm(model, TOKENIZER), None, PROTEINS, max_length=8, progress=False)
    assert wrapped == direct and direct[0]["scored_length"] == 6
