"""``performers embed`` and :mod:`performers.jobs.embedding`: pooling, layers, batching,
file formats, errors and the command line, on tiny random models in float64."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from performers import FavorConfig, PerformerConfig
from performers.cli import build_parser, main
from performers.jobs.embedding import (
    INCLUDES,
    crop_proteins,
    embed_proteins,
    extract_representations,
    protein_pairs,
    resolve_layers,
    token_batches,
    truncate_proteins,
    write_embeddings,
)
from performers.models import build_model
from performers.proteins import FastaRecord, ProteinTokenizer

TOKENIZER = ProteinTokenizer()
PROTEINS = [
    ("P1", "MKVLAAGIVGLLLA"),
    ("P2", "MKT"),
    ("P3", "ACDEFGHIKLMNPQRSTVWYACDEFGHIK"),
    ("P4", "WWYQ"),
]


def tiny_model(task="mlm", attention="favor", position="learned", max_positions=64, seed=0):
    """A random 2-layer model in float64; initializer_range 0.5 so that layers differ visibly."""
    config = PerformerConfig(
        vocab_size=len(TOKENIZER),
        d_model=16,
        num_layers=2,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=max_positions,
        position=position,
        attention=attention,
        pad_token_id=TOKENIZER.pad_id,
        initializer_range=0.5,
        favor=FavorConfig(num_features=16),
    )
    torch.manual_seed(seed)
    return build_model(config, task).double().eval()


def save_model(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    TOKENIZER.save(directory / "tokenizer.json")
    return directory


def write_fasta(path: Path, proteins) -> Path:
    path.write_text("".join(f">{name} some description\n{sequence}\n" for name, sequence in proteins))
    return path


@pytest.mark.parametrize("attention", ["favor", "exact"])
@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_embedding_alone_equals_embedding_in_a_padded_batch(attention, task):
    torch.set_num_threads(1)
    model = tiny_model(task, attention)
    for per_residue in (False, True):
        for layer in (0, 1, 2):
            batched = embed_proteins(
                model,
                TOKENIZER,
                PROTEINS,
                per_residue=per_residue,
                layer=layer,
                max_tokens=4096,
                progress=False,
            )
            assert list(batched) == [name for name, _ in PROTEINS]  # input order
            for name, sequence in PROTEINS:
                alone = embed_proteins(
                    model, TOKENIZER, [(name, sequence)], per_residue=per_residue, layer=layer, progress=False
                )[name]
                assert alone.dtype == torch.float64
                assert alone.shape == ((len(sequence), 16) if per_residue else (16,))
                torch.testing.assert_close(batched[name], alone, rtol=1e-12, atol=1e-12)


def test_layers_pooling_and_specials_match_the_hidden_states():
    model = tiny_model("mlm", position="rotary")
    name, sequence = PROTEINS[0]
    ids = torch.tensor([TOKENIZER.encode(sequence)])
    out = model.model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)
    assert not torch.allclose(out.hidden_states[1], out.hidden_states[2])
    for layer in (0, 1, 2):
        residues = out.hidden_states[layer][0, 1:-1]  # no <cls>, no <eos>
        per_residue = embed_proteins(
            model, TOKENIZER, [(name, sequence)], per_residue=True, layer=layer, progress=False
        )
        mean = embed_proteins(model, TOKENIZER, [(name, sequence)], layer=layer, progress=False)
        torch.testing.assert_close(per_residue[name], residues, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mean[name], residues.mean(0), rtol=1e-12, atol=1e-12)
        with_specials = out.hidden_states[layer][0].mean(0)
        assert not torch.allclose(mean[name], with_specials)
    default = embed_proteins(model, TOKENIZER, [(name, sequence)], progress=False)[name]
    torch.testing.assert_close(default, out.last_hidden_state[0, 1:-1].mean(0), rtol=1e-12, atol=1e-12)
    for bad in (-1, 3, 1.0):
        with pytest.raises(ValueError, match="layer"):
            embed_proteins(model, TOKENIZER, [(name, sequence)], layer=bad, progress=False)


def test_language_models_pass_every_hidden_state_through():
    ids = torch.tensor([TOKENIZER.encode("MKVL"), TOKENIZER.encode("AAGI")])
    for task in ("mlm", "clm"):
        model = tiny_model(task)
        out = model(ids, output_hidden_states=True)
        reference = model.model(ids, is_causal=task == "clm", output_hidden_states=True).hidden_states
        assert len(out.all_hidden_states) == 3
        for a, b in zip(out.all_hidden_states, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert model(ids).all_hidden_states is None


@pytest.mark.parametrize(
    "lengths, budget",
    [([5, 3, 9, 9, 1, 7, 2], 18), ([100, 3, 4], 10), ([4] * 10, 16), ([], 8), ([7], 1)],
)
def test_token_batches_cover_every_item_once_within_the_budget(lengths, budget):
    batches = token_batches(lengths, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert len(batch) * longest <= budget or len(batch) == 1  # an over-long item runs alone
    order = [i for batch in batches for i in batch]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches(lengths, 0)


def test_small_budget_gives_the_same_embeddings():
    model = tiny_model("mlm")
    wide = embed_proteins(model, TOKENIZER, PROTEINS, max_tokens=10_000, progress=False)
    narrow = embed_proteins(model, TOKENIZER, PROTEINS, max_tokens=8, progress=False)
    for name, _ in PROTEINS:
        torch.testing.assert_close(wide[name], narrow[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("per_residue", [False, True])
def test_files_round_trip(tmp_path, suffix, per_residue):
    model = tiny_model("mlm")
    # Ids that numpy.savez would mistake for its own arguments, and a UniProt-style id.
    proteins = [("file", "MKV"), ("allow_pickle", "MKVLA"), ("sp|P69905|HBA_HUMAN", "VLSPADKTNV")]
    embeddings = embed_proteins(model, TOKENIZER, proteins, per_residue=per_residue, progress=False)
    path = write_embeddings(embeddings, tmp_path / f"out{suffix}", metadata={"layer": "2"})
    if suffix == ".npz":
        with np.load(path) as data:
            loaded = {key: torch.from_numpy(data[key]) for key in data.files}
    else:
        loaded = load_file(path)
    assert set(loaded) == {name for name, _ in proteins}
    for name, tensor in embeddings.items():
        assert torch.equal(loaded[name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == [f"out{suffix}"]  # no temporary file left
    with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
        write_embeddings(embeddings, tmp_path / "out.pt")


def test_errors_name_the_protein():
    model = tiny_model("mlm", max_positions=12)  # learned positions: at most 10 residues
    whole = embed_proteins(model, TOKENIZER, PROTEINS, per_residue=True, progress=False)
    assert whole.crop.cropped == ("P1", "P3") and whole["P1"].shape == (10, 16)  # the rule: cropped, counted
    cropped = embed_proteins(model, TOKENIZER, PROTEINS, max_length=12, per_residue=True, progress=False)
    assert cropped["P1"].shape == (10, 16) and cropped["P2"].shape == (3, 16)
    uncropped = embed_proteins(
        model, TOKENIZER, [("P1", PROTEINS[0][1][:10])], per_residue=True, progress=False
    )
    torch.testing.assert_close(cropped["P1"], uncropped["P1"], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="max_length 13 exceeds"):
        embed_proteins(model, TOKENIZER, PROTEINS, max_length=13, progress=False)
    with pytest.raises(ValueError, match="max_length must be"):
        embed_proteins(model, TOKENIZER, PROTEINS, max_length=2, progress=False)
    with pytest.raises(ValueError, match="'P2' appears twice"):
        protein_pairs([*PROTEINS, ("P2", "MK")])
    with pytest.raises(ValueError, match="no residues"):
        protein_pairs([("empty", "")])
    assert protein_pairs([FastaRecord("X1 desc SET=train", "MKV")]) == [("X1", "MKV")]
    pairs, count = crop_proteins(PROTEINS, tiny_model(position="rotary"), None)
    assert count == 0 and pairs == PROTEINS  # rotary positions: no limit
    with pytest.raises(TypeError, match="PerformerForMaskedLM"):
        embed_proteins(torch.nn.Linear(2, 2), TOKENIZER, PROTEINS)


def test_the_model_keeps_its_training_mode():
    model = tiny_model("mlm").train()
    embed_proteins(model, TOKENIZER, PROTEINS[:1], progress=False)
    assert model.training


def test_cli_writes_embeddings_and_says_what_it_wrote(tmp_path, capsys):
    torch.set_num_threads(1)
    model = tiny_model("mlm", position="rotary")
    directory = save_model(model.float(), tmp_path / "model")
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    out = tmp_path / "emb.npz"
    assert main(["embed", str(directory), str(fasta), "--out", str(out), "--max-tokens", "40"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 proteins' representations" in printed and "keyed by FASTA id" in printed
    assert "mean (16,)" in printed and "residues/s" in printed
    expected = embed_proteins(model, TOKENIZER, PROTEINS, progress=False)
    with np.load(out) as data:
        for name, _ in PROTEINS:
            np.testing.assert_allclose(data[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)

    out = tmp_path / "emb.safetensors"
    # The earlier spellings (hidden): --per-residue, --layer N, --max-length in tokens.
    args = ["--per-residue", "--layer", "1", "--attention", "exact", "--max-length", "8"]
    assert main(["embed", str(directory), str(fasta), "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert (
        "cropped 2 of 4 proteins to 6 residues (max_length 8): P1, P3" in printed
        and "layer(s) 1 of 2" in printed
    )
    model.set_attention("exact")
    expected = embed_proteins(
        model, TOKENIZER, PROTEINS, per_residue=True, layer=1, max_length=8, progress=False
    )
    loaded = load_file(out)
    assert loaded["P1"].shape == (6, 16) and loaded["P2"].shape == (3, 16)
    for name, _ in PROTEINS:
        torch.testing.assert_close(loaded[name], expected[name], rtol=1e-5, atol=1e-6)


def test_cli_errors(tmp_path, cli_error):
    directory = save_model(tiny_model("mlm", max_positions=12).float(), tmp_path / "model")
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    out = str(tmp_path / "e.npz")
    cli_error(
        ["embed", str(directory), str(fasta), "--out", out, "--max-length", "13"],
        match="--max-length: max_length 13 exceeds the model's maximum length 12",
    )
    repeated = write_fasta(tmp_path / "rep.fasta", [*PROTEINS, ("P3", "MKV")])
    cli_error(
        ["embed", str(directory), str(repeated), "--out", out, "--max-length", "12"],
        match="'P3' appears twice",
    )
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    cli_error(["embed", str(directory), str(empty), "--out", out], match=r"empty\.fasta: no FASTA records")
    broken = tmp_path / "broken.fasta"
    broken.write_text("MKV\n")
    cli_error(["embed", str(directory), str(broken), "--out", out], match=r"broken\.fasta:1")
    cli_error(
        ["embed", str(directory), str(fasta), "--out", str(tmp_path / "e.txt")],
        match=r"must end in \.npz or \.safetensors",
    )
    cli_error(
        ["embed", str(directory), str(fasta), "--out", out, "--max-length", "12", "--layer", "5"],
        match="layer must be",
    )
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("command", ["embed", "score"])
def test_every_option_has_help(command):
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subparsers.choices[command]
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"performers {command} {action.dest} has no help"


def test_benchmark_measures_the_commands(tmp_path):
    from performers.bench.embed_score import Spec, format_table, measure

    base = Spec("embed", "favor", 0, 0, d_model=16, num_layers=1, num_heads=2, d_ff=32, num_features=8)
    points = measure(
        ["embed"], ["favor"], {"embed": [96]}, base=base, residues_per_point=192, log=lambda _: None
    )
    (point,) = points
    assert point.error is None and point.spec.proteins == 2 and point.spec.length == 96
    assert point.seconds > 0 and point.residues_per_s == pytest.approx(192 / point.seconds)
    assert point.peak_rss_mib > 0
    assert "| embed | favor | 96 | 2 |" in format_table(points)


# ---- esm-extract conventions: several layers, mean / per_tok / bos, truncation --------------


@torch.no_grad()
def test_repr_layers_and_kinds_match_a_manual_forward():
    model = tiny_model("mlm", position="rotary")
    name, sequence = PROTEINS[0]
    hidden = model.model(torch.tensor([TOKENIZER.encode(sequence)]), output_hidden_states=True).hidden_states
    out = extract_representations(
        model,
        TOKENIZER,
        [(name, sequence)],
        repr_layers=[-1, 0, -2, 2],  # -1 and 2 are the same layer: kept once
        include=["mean", "per_tok", "bos"],
        progress=False,
    )[name]
    assert list(out) == ["mean", "per_tok", "bos"]
    for layer in (2, 0, 1):
        residues = hidden[layer][0, 1:-1]  # without <cls> and <eos>
        assert list(out["mean"]) == [2, 0, 1]
        torch.testing.assert_close(out["per_tok"][layer], residues, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["mean"][layer], residues.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["bos"][layer], hidden[layer][0, 0], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(out["mean"][layer], hidden[layer][0].mean(0))  # specials excluded
    assert resolve_layers([-3, -1, 1], 2) == [0, 2, 1]
    for bad in ([-4], [3], [], [1.0], 1):
        with pytest.raises(ValueError, match="layer"):
            resolve_layers(bad, 2)
    with pytest.raises(ValueError, match="include must be"):
        extract_representations(model, TOKENIZER, PROTEINS, include=["contacts"], progress=False)


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_every_kind_alone_equals_in_a_padded_batch(task):
    torch.set_num_threads(1)
    model = tiny_model(task)
    kinds = dict(repr_layers=[0, 1, -1], include=["mean", "per_tok", "bos"], progress=False)
    batched = extract_representations(model, TOKENIZER, PROTEINS, max_tokens=4096, **kinds)
    for name, sequence in PROTEINS:
        alone = extract_representations(model, TOKENIZER, [(name, sequence)], **kinds)[name]
        for kind in ("mean", "per_tok", "bos"):
            for layer in (0, 1, 2):
                torch.testing.assert_close(
                    batched[name][kind][layer], alone[kind][layer], rtol=1e-12, atol=1e-12
                )


def test_truncation_length_keeps_the_first_residues():
    model = tiny_model("mlm", max_positions=12)  # learned positions: at most 10 residues
    kinds = dict(include=["per_tok"], progress=False)
    whole = extract_representations(model, TOKENIZER, PROTEINS, **kinds)
    assert whole.crop.cropped == ("P1", "P3") and whole["P1"]["per_tok"][2].shape[0] == 10
    out = extract_representations(model, TOKENIZER, PROTEINS, truncation_length=5, **kinds)
    assert [out[name]["per_tok"][2].shape[0] for name, _ in PROTEINS] == [5, 3, 5, 4]
    short = extract_representations(model, TOKENIZER, [("P1", PROTEINS[0][1][:5])], **kinds)
    torch.testing.assert_close(out["P1"]["per_tok"][2], short["P1"]["per_tok"][2], rtol=1e-12, atol=1e-12)
    assert truncate_proteins(PROTEINS, None, 5)[1] == 2  # P1 and P3 were longer
    for bad, match in ((0, "truncation_length must be"), (11, "truncation_length 11 exceeds")):
        with pytest.raises(ValueError, match=match):
            extract_representations(model, TOKENIZER, PROTEINS, truncation_length=bad, **kinds)


def test_cli_writes_several_layers_and_kinds(tmp_path, capsys, cli_error):
    model = tiny_model("clm", position="rotary")
    directory = save_model(model.float(), tmp_path / "model")
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    out = tmp_path / "emb.safetensors"
    args = ["--repr-layers", "-1", "0", "--include", "mean", "per_tok", "bos", "--dtype", "float64"]
    assert main(["embed", str(directory), str(fasta), "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert "keys ID/KIND/LAYER" in printed and "per_tok (L, 16) with L 3..29" in printed
    loaded = load_file(out)
    assert len(loaded) == 4 * 3 * 2
    expected = extract_representations(
        model.double(), TOKENIZER, PROTEINS, repr_layers=[2, 0], include=INCLUDES, progress=False
    )
    for name, _ in PROTEINS:
        for kind in INCLUDES:
            for layer in (2, 0):
                torch.testing.assert_close(loaded[f"{name}/{kind}/{layer}"], expected[name][kind][layer])
    with safe_open(out, "pt") as handle:
        assert handle.metadata()["keys"] == "id/include/layer" and handle.metadata()["repr_layers"] == "2 0"

    out = tmp_path / "cut.npz"
    assert main(["embed", str(directory), str(fasta), "--out", str(out), "--truncation-length", "4",
                 "--include", "per_tok"]) == 0  # fmt: skip
    assert "cropped 2 of 4 proteins to 4 residues (truncation_length 4): P1, P3" in capsys.readouterr().out
    with np.load(out) as data:
        assert data["P1"].shape == (4, 16) and data["P2"].shape == (3, 16)
    base = ["embed", str(directory), str(fasta), "--out", str(tmp_path / "e.npz")]
    cli_error([*base, "--truncation-length", "0"], match="--truncation-length: truncation_length must be")
    cli_error([*base, "--repr-layers", "-4"], match=r"layer must be an int in -3\.\.2")
    with pytest.raises(SystemExit) as exit:  # argparse's own refusal, one line, status 2
        main([*base, "--include", "contacts"])
    assert exit.value.code == 2 and "--include: invalid choice: 'contacts'" in capsys.readouterr().err
    cli_error([*base, "--truncation-length", "4", "--max-length", "6"], match="not also --max-length")
    assert not (tmp_path / "e.npz").exists()
