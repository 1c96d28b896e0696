"""The proteins the embedding and scoring functions take (issue 32, item 6): FASTA records,
``(id, sequence)`` pairs, a ``{id: sequence}`` dict or plain strings give the same results;
anything else is a TypeError naming the accepted forms and what was given; embeddings come as
``(ids, array)`` or a pandas table; ``device=`` moves the model."""

import importlib.util

import numpy as np
import pytest
import torch

from performers.jobs.embedding import (
    Embeddings,
    embed_proteins,
    extract_representations,
    protein_pairs,
)
from performers.jobs.scoring import score_proteins
from performers.proteins import FastaRecord
from tests.jobs.test_embedding import PROTEINS, TOKENIZER, tiny_model

RECORDS = [FastaRecord(f"{name} some description", sequence) for name, sequence in PROTEINS]
SEQUENCES = [sequence for _, sequence in PROTEINS]
GENERATED = [f"seq{i}" for i in range(1, len(PROTEINS) + 1)]


def test_every_form_gives_the_same_pairs():
    assert protein_pairs(RECORDS) == PROTEINS
    assert protein_pairs(dict(PROTEINS)) == PROTEINS
    assert protein_pairs([list(pair) for pair in PROTEINS]) == PROTEINS
    assert protein_pairs(iter(PROTEINS)) == PROTEINS  # any iterable, read once
    assert protein_pairs(SEQUENCES) == list(zip(GENERATED, SEQUENCES, strict=True))
    assert protein_pairs("MKV") == [("seq1", "MKV")]  # one string is one protein, not residues
    # Generated ids count every item, so a mix keeps them positional.
    assert protein_pairs([("A", "MKV"), "WWY"]) == [("A", "MKV"), ("seq2", "WWY")]


@pytest.mark.parametrize(
    ("given", "what"),
    [
        (5, "got int 5"),
        (b"MKV", "got bytes b'MKV'"),
        ([("P1", "MKV", "extra")], "item 1 is tuple ('P1', 'MKV', 'extra')"),
        (["MKV", 7], "item 2 is int 7"),
        ({"P1": 3}, "item 1 is tuple ('P1', 3)"),
        ([("P1", None)], "item 1 is tuple ('P1', None)"),
    ],
)
def test_anything_else_is_a_type_error_naming_the_forms_and_what_it_got(given, what):
    with pytest.raises(TypeError) as caught:
        protein_pairs(given)
    message = str(caught.value)
    assert "FASTA records" in message and "(id, sequence) pairs" in message
    assert "{id: sequence} dict" in message and "sequence strings" in message
    assert what in message


def test_a_dict_once_failed_with_a_bare_unpacking_error():
    # The issue's report: embed_proteins(model, tokenizer, {"id": "MKV"}) raised "not enough
    # values to unpack"; a dict of id -> sequence is now one of the accepted forms.
    model = tiny_model("mlm")
    out = embed_proteins(model, TOKENIZER, {"only": "MKVLA"}, progress=False)
    assert list(out) == ["only"] and out["only"].shape == (16,)


def test_embeddings_of_every_form_equal_those_of_records():
    model = tiny_model("mlm")
    reference = embed_proteins(model, TOKENIZER, RECORDS, progress=False)
    for given, ids in ((dict(PROTEINS), None), (PROTEINS, None), (SEQUENCES, GENERATED)):
        out = embed_proteins(model, TOKENIZER, given, progress=False)
        assert list(out) == (ids or list(reference))
        for a, b in zip(out.values(), reference.values(), strict=True):
            assert torch.equal(a, b)
    several = extract_representations(model, TOKENIZER, SEQUENCES, repr_layers=[0, -1], progress=False)
    assert list(several) == GENERATED
    assert torch.equal(several["seq1"]["mean"][2], reference["P1"])


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_scores_of_every_form_equal_those_of_records(task):
    model = tiny_model(task)
    proteins = PROTEINS[1:]  # the short ones: pseudo-log-likelihoods cost one pass per residue
    reference = score_proteins(model, TOKENIZER, proteins, progress=False)
    for given in (dict(proteins), [s for _, s in proteins], [FastaRecord(n, s) for n, s in proteins]):
        rows = score_proteins(model, TOKENIZER, given, progress=False)
        assert [r["log_likelihood"] for r in rows] == [r["log_likelihood"] for r in reference]
    assert [r["id"] for r in score_proteins(model, TOKENIZER, ["MKT"], progress=False)] == ["seq1"]
    with pytest.raises(TypeError, match=r"proteins must be .* got int 3"):
        score_proteins(model, TOKENIZER, 3, progress=False)


def test_embeddings_as_arrays_and_as_a_table():
    model = tiny_model("mlm")
    out = embed_proteins(model, TOKENIZER, PROTEINS, progress=False)
    assert isinstance(out, Embeddings) and isinstance(out, dict)
    ids, array = out.as_arrays()
    assert ids == [name for name, _ in PROTEINS] and array.shape == (len(PROTEINS), 16)
    assert isinstance(array, np.ndarray)
    for row, name in enumerate(ids):
        np.testing.assert_array_equal(array[row], out[name].numpy())
    assert Embeddings().as_arrays()[0] == []
    bf16 = Embeddings({"a": torch.ones(3, dtype=torch.bfloat16)})
    assert bf16.as_arrays()[1].dtype == np.float32  # numpy has no bfloat16
    per_residue = embed_proteins(model, TOKENIZER, PROTEINS, per_residue=True, progress=False)
    with pytest.raises(ValueError, match=r"per-residue embeddings .* embeddings\[id\]\.numpy\(\)"):
        per_residue.as_arrays()
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(ImportError, match=r"needs pandas .* as_arrays\(\)"):
            out.as_dataframe()
    else:
        table = out.as_dataframe()
        assert list(table.index) == ids and table.index.name == "id" and table.shape == (4, 16)
        np.testing.assert_array_equal(table.to_numpy(), array)


def test_device_moves_the_model_and_the_inputs_follow():
    model = tiny_model("mlm").float()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reference = embed_proteins(model, TOKENIZER, PROTEINS, progress=False)
    moved = embed_proteins(model, TOKENIZER, PROTEINS, progress=False, device=device)
    assert next(model.parameters()).device.type == device.type
    scores = score_proteins(model, TOKENIZER, PROTEINS[1:2], progress=False, device="cpu")
    assert next(model.parameters()).device.type == "cpu" and scores[0]["id"] == "P2"
    for name in reference:  # results come back on the CPU wherever the model ran
        assert moved[name].device.type == "cpu"
        torch.testing.assert_close(moved[name], reference[name], rtol=1e-4, atol=1e-5)
