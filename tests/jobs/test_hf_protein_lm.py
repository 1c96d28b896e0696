"""Hugging Face protein model directories in every protein command
(performers.jobs.hf_protein_lm, through performers.cli.main): ESM converted or not, ProtBert-style
BERT, ProtGPT2-style GPT-2, next to this package's models.

Each model is a tiny random one saved here (the builders of tests/jobs/test_protein_models.py);
every number the commands print or write is checked against the Hugging Face model run
directly, not against the adapter.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import torch

from performers import PerformerForCausalLM
from performers.cli import main
from performers.jobs.finetuning import HuggingFaceEncoder, finetuning_encoder
from performers.jobs.hf_protein_lm import HuggingFaceProteinLM, generate_proteins, protein_lm_from_directory
from performers.jobs.protein_lm import PerformerProteinLM
from performers.jobs.protein_models import load_protein_model
from performers.proteins import ProteinTokenizer

pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import EsmModel

from performers.integrations.transformers import is_performerized
from tests.jobs.test_protein_models import _esm, _performer, _protbert, _protgpt2

PROTEINS = {"a": "MKTAYIAKQR", "b": "MKVLA"}
MASKED = ("esm", "esm_converted", "protbert")
HF = (*MASKED, "protgpt2")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every kind of protein model directory, built once for the module."""
    root = tmp_path_factory.mktemp("models")
    return {
        "esm": _esm(root / "esm"),
        "esm_converted": _esm(root / "esm_converted", convert=True),
        "protbert": _protbert(root / "protbert"),
        "protgpt2": _protgpt2(root / "protgpt2"),
        "performer": _performer(root / "performer"),
        "performer_causal": _performer(root / "performer_causal", PerformerForCausalLM),
    }


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "proteins.fasta"
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in PROTEINS.items()))
    return path


def _reference_ids(directory, sequence: str) -> torch.Tensor:
    """The ids the model's own tokenizer gives, ``(1, L)``: ESM / BERT add <cls>/<eos> ([CLS]/
    [SEP]) themselves; ProtGPT2 reads <|endoftext|> around the sequence."""
    loaded = load_protein_model(directory)
    tokenizer = loaded.tokenizer
    if loaded.family == "gpt2":
        ids = [tokenizer.eos_token_id, *tokenizer(sequence)["input_ids"], tokenizer.eos_token_id]
    else:
        ids = tokenizer(loaded.residue_separator.join(sequence))["input_ids"]
    return torch.tensor([ids])


def test_the_loader_wraps_each_kind(models):
    for name, directory in models.items():
        lm = protein_lm_from_directory(directory)
        expected = PerformerProteinLM if name.startswith("performer") else HuggingFaceProteinLM
        assert isinstance(lm, expected), name
    esm = protein_lm_from_directory(models["esm"])
    assert esm.residue_limit is None and not esm.is_causal and esm.num_layers == 2  # rotary
    bert = protein_lm_from_directory(models["protbert"])
    assert bert.residue_limit == 62 and bert.tokenizer.encode("MK")[0] == bert.tokenizer.cls_id
    gpt2 = protein_lm_from_directory(models["protgpt2"])
    assert gpt2.is_causal and not gpt2.one_token_per_residue
    assert (
        gpt2.tokenizer.encode("MKV", add_special_tokens=False)
        == _reference_ids(models["protgpt2"], "MKV")[0, 1:-1].tolist()
    )  # MK is one token


@pytest.mark.parametrize("name", HF)
def test_embed_is_the_models_own_last_hidden_state_mean(name, models, fasta, tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert main(["embed", str(models[name]), str(fasta), "--out", str(out)]) == 0
    loaded = load_protein_model(models[name])
    written = np.load(out)
    for protein, sequence in PROTEINS.items():
        ids = _reference_ids(models[name], sequence)
        with torch.no_grad():
            hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        # The mean over the protein's tokens (residues for ESM/BERT, BPE tokens for ProtGPT2).
        expected = hidden[0, 1:-1].mean(0).numpy()
        np.testing.assert_allclose(written[protein], expected, rtol=1e-5, atol=1e-6)


def test_embed_refuses_per_residue_vectors_of_multi_residue_tokens(models, fasta, tmp_path, cli_error):
    argv = ["embed", str(models["protgpt2"]), str(fasta), "--out", str(tmp_path / "e.npz")]
    cli_error([*argv, "--include", "per_tok"], match="per_tok.*several residues")


@pytest.mark.parametrize("name", MASKED)
def test_score_masked_marginals_match_the_models_own_masked_prediction(name, models, tmp_path):
    wildtype, variant = PROTEINS["a"], "MKTAYIAKQA"  # R10A
    (tmp_path / "wt.fasta").write_text(f">wt\n{wildtype}\n")
    (tmp_path / "v.fasta").write_text(f">wt\n{wildtype}\n>m\n{variant}\n")
    out = tmp_path / "s.csv"
    argv = ["score", str(models[name]), str(tmp_path / "v.fasta"), "--wildtype", str(tmp_path / "wt.fasta")]
    assert main([*argv, "--out", str(out)]) == 0
    rows = {row["id"]: row for row in csv.DictReader(out.open())}
    assert float(rows["wt"]["score"]) == 0.0 and rows["m"]["method"] == "masked-marginals"
    loaded = load_protein_model(models[name])
    ids = _reference_ids(models[name], wildtype)
    ids[0, 10] = loaded.tokenizer.mask_token_id  # residue 10 sits after <cls>
    with torch.no_grad():
        log_probs = torch.log_softmax(loaded.model(input_ids=ids).logits[0, 10], -1)
    code = loaded.tokenizer.convert_tokens_to_ids
    expected = float(log_probs[code("A")] - log_probs[code("R")])
    assert float(rows["m"]["score"]) == pytest.approx(expected, abs=1e-5)


def test_score_of_a_protgpt2_model_is_its_own_log_likelihood(models, fasta, tmp_path, cli_error):
    out = tmp_path / "s.csv"
    assert main(["score", str(models["protgpt2"]), str(fasta), "--out", str(out)]) == 0
    rows = {row["id"]: row for row in csv.DictReader(out.open())}
    loaded = load_protein_model(models["protgpt2"])
    for protein, sequence in PROTEINS.items():
        ids = _reference_ids(models["protgpt2"], sequence)
        with torch.no_grad():  # GPT-2's own loss: the mean NLL of every next token
            loss = float(loaded.model(input_ids=ids, labels=ids).loss)
        terms = ids.shape[1] - 1  # its BPE tokens and the closing <|endoftext|>
        assert int(rows[protein]["terms"]) == terms and rows[protein]["method"] == "causal"
        assert float(rows[protein]["log_likelihood"]) == pytest.approx(-loss * terms, rel=1e-5)
        assert float(rows[protein]["perplexity"]) == pytest.approx(math.exp(loss), rel=1e-5)
    (tmp_path / "wt.fasta").write_text(f">wt\n{PROTEINS['a']}\n")
    argv = ["score", str(models["protgpt2"]), str(fasta), "--wildtype", str(tmp_path / "wt.fasta")]
    cli_error([*argv, "--strategy", "masked-marginals", "--out", str(out)], match="needs a masked")


@pytest.mark.parametrize("name", [*HF, "performer", "performer_causal"])
def test_evaluate_counts_what_it_scores(name, models, fasta, tmp_path, capsys):
    per_sequence = tmp_path / "rows.csv"
    argv = ["evaluate", str(models[name]), "--data", str(fasta), "--per-sequence", str(per_sequence)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[0]
    accuracy = float(line.split("accuracy ")[1].split("%")[0])
    perplexity = float(line.split("perplexity ")[1].split(" ")[0])
    tokens = int(line.split(" over ")[1].split(" ")[0])
    assert 0 <= accuracy <= 100 and math.isfinite(perplexity) and perplexity > 1
    rows = list(csv.DictReader(per_sequence.open()))
    names = [row["id"] for row in rows]
    assert sum(int(r["tokens"]) for r in rows) == tokens and all(int(r["tokens"]) for r in rows)
    if name == "performer":  # BERT masking: a short protein may draw no mask — listed, not a NaN row
        assert names == [p for p in PROTEINS if p in names]
        assert len(names) == len(PROTEINS) or f"skipped {len(PROTEINS) - len(names)} of 2 proteins" in out
    else:
        assert names == list(PROTEINS)
    if name in MASKED:  # exactly max(1, round(15% of n)) residues masked per protein
        assert tokens == sum(max(1, round(0.15 * len(s))) for s in PROTEINS.values())
    elif name == "protgpt2":  # every next token: its BPE tokens and <|endoftext|>
        assert tokens == sum(_reference_ids(models[name], s).shape[1] - 1 for s in PROTEINS.values())


def test_generate_continues_with_the_models_own_greedy_tokens(models, capsys):
    assert main(["generate", str(models["protgpt2"]), "MK", "--max-new-tokens", "4"]) == 0
    generated = capsys.readouterr().out.split()
    loaded = load_protein_model(models["protgpt2"])
    ids = _reference_ids(models["protgpt2"], "MK")[:, :-1]  # <|endoftext|> MK
    for _ in range(4):  # greedy by hand, without a cache
        with torch.no_grad():
            ids = torch.cat([ids, loaded.model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    new = ids[0, 2:].tolist()
    if loaded.tokenizer.eos_token_id in new:
        new = new[: new.index(loaded.tokenizer.eos_token_id)]
    assert generated == ["MK" + loaded.tokenizer.decode(new, skip_special_tokens=True)]


def test_a_favor_protgpt2_generates_with_a_running_state_as_without_a_cache(models):
    lm = protein_lm_from_directory(models["protgpt2"], attention="favor")
    assert is_performerized(lm.model)
    generated = generate_proteins(lm, ["MK", "AAV"], max_new_tokens=5)
    for prompt, protein in zip(["MK", "AAV"], generated, strict=True):
        ids = torch.tensor([lm.tokenizer.encode(prompt)[:-1]])
        for _ in range(5):  # greedy, the whole prefix again at every step
            next_id = lm.logits(ids, torch.ones_like(ids))[:, -1:].argmax(-1)
            ids = torch.cat([ids, next_id], dim=1)
        new = ids[0, len(lm.tokenizer.encode(prompt)) - 1 :].tolist()
        if lm.tokenizer.eos_id in new:
            new = new[: new.index(lm.tokenizer.eos_id)]
        assert protein == prompt + lm.tokenizer.tokenizer.decode(new, skip_special_tokens=True)


def test_attention_switches_a_hugging_face_model(models):
    assert is_performerized(protein_lm_from_directory(models["esm"], attention="favor").model)
    assert not is_performerized(protein_lm_from_directory(models["esm_converted"], attention="exact").model)
    assert is_performerized(protein_lm_from_directory(models["esm_converted"]).model)  # as saved


@pytest.mark.parametrize("name", MASKED)
def test_generate_refuses_a_masked_model(name, models, cli_error):
    cli_error(["generate", str(models[name]), "MK"], match="needs a causal LM")


def test_diagnose_an_esm_directory_on_proteins(models, fasta, tmp_path, capsys):
    argv = ["diagnose", str(models["esm"]), "--data", str(fasta), "--num-features", "16"]
    assert main([*argv, "--draws", "2", "--kernels", "softmax", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "diagnose.json").read_text()
    assert '"model_kind": "hf"' in report and '"sequences": 2' in report
    # <cls> + residues + <eos> of each protein, as ESM's tokenizer lays them out.
    assert f'"tokens": {sum(len(s) + 2 for s in PROTEINS.values())}' in report


@pytest.mark.parametrize("name", MASKED)
def test_the_finetuning_encoder_reads_protein_tokenizer_ids_as_the_model_reads_its_own(name, models):
    encoder, source = finetuning_encoder(models[name])
    assert isinstance(encoder, HuggingFaceEncoder) and "Hugging Face" in source
    loaded = load_protein_model(models[name])
    ours, mask = ProteinTokenizer().batch_encode([PROTEINS["a"]])
    with torch.no_grad():
        mapped = encoder.eval()(ours, mask).last_hidden_state
        own = loaded.model.base_model(input_ids=_reference_ids(models[name], PROTEINS["a"])).last_hidden_state
    torch.testing.assert_close(mapped, own)


def test_finetune_a_hugging_face_backbone(models, tmp_path, capsys, cli_error):
    sequences, labels = tmp_path / "s.fasta", tmp_path / "l.fasta"
    records = [(f"p{i}", "MKVACDEFGHIK"[: 6 + i % 6]) for i in range(8)]
    sequences.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    split = {0: "SET=test", 1: "SET=train VALIDATION=True"}
    lines = []  # one label per residue, the split in the header
    for i, (name, sequence) in enumerate(records):
        lines.append(f">{name} {split.get(i % 4, 'SET=train')}\n{('ab' * 6)[: len(sequence)]}\n")
    labels.write_text("".join(lines))
    sizes = ["--sequences", str(sequences), "--labels", str(labels), "--steps", "2", "--batch-size", "2"]
    sizes += ["--max-length", "16", "--eval-every", "2", "--threads", "1"]
    argv = ["finetune", "--pretrained", str(models["esm_converted"]), *sizes, "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ResidueLabels (4 train), encoder from" in out and "(Hugging Face esm)" in out
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    # final/ is self-contained (the backbone's own files and tokenizer inside) and loads through the
    # one loader; its predictions are those the model made of the test split when training ended.
    final = tmp_path / "run" / "final"
    assert {"vocab.txt", "config.json"} <= {p.name for p in (final / "encoder").iterdir()}
    loaded = load_protein_model(tmp_path / "run")
    assert (loaded.kind, loaded.source, loaded.family) == ("token_classifier", "finetuned", "esm")
    assert loaded.backbone.source == "huggingface" and isinstance(loaded.model.encoder, HuggingFaceEncoder)
    assert is_performerized(loaded.backbone.model)  # the converted backbone stays FAVOR+
    test = [(name, seq) for i, (name, seq) in enumerate(records) if i % 4 == 0]
    fasta = tmp_path / "test.fasta"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in test))
    assert main(["predict", str(final), str(fasta), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as handle:
        predicted = list(csv.DictReader(handle))
    with open(tmp_path / "run" / "test_predictions.csv") as handle:
        at_the_end = list(csv.DictReader(handle))
    assert [(r["id"], r["labels"]) for r in predicted] == [(r["id"], r["labels"]) for r in at_the_end]
    for row, end in zip(predicted, at_the_end, strict=True):
        assert float(row["confidence"]) == pytest.approx(float(end["confidence"]), abs=1e-5)
    assert '"accuracy"' in (tmp_path / "run" / "results.json").read_text()  # classes a/b: not Q3
    assert main(["embed", str(final), str(fasta), "--out", str(tmp_path / "e.npz")]) == 0
    cli_error(
        ["score", str(final), str(fasta), "--out", str(tmp_path / "s.csv")], match="not a language model"
    )
    cli_error(["finetune", "--pretrained", str(models["protgpt2"]), *sizes], match="several residues")


def test_an_esm_encoder_embeds_but_does_not_score(models, fasta, tmp_path, capsys, cli_error):
    encoder = _esm(tmp_path / "encoder", cls=EsmModel)
    assert main(["embed", str(encoder), str(fasta), "--out", str(tmp_path / "e.npz")]) == 0
    argv = ["score", str(encoder), str(fasta), "--out", str(tmp_path / "s.csv")]
    cli_error(argv, match=f"{encoder}: a EsmModel has no language-model head")


@pytest.mark.parametrize("command", ["embed", "score", "evaluate", "generate"])
def test_a_directory_that_is_neither_is_named_in_one_line(command, tmp_path, fasta, cli_error):
    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    argv = {
        "embed": ["embed", str(tmp_path), str(fasta), "--out", str(tmp_path / "e.npz")],
        "score": ["score", str(tmp_path), str(fasta), "--out", str(tmp_path / "s.csv")],
        "evaluate": ["evaluate", str(tmp_path), "--data", str(fasta)],
        "generate": ["generate", str(tmp_path), "MK"],
    }[command]
    cli_error(argv, match=f"{tmp_path}: not a protein model directory")


@pytest.mark.parametrize("command", ["embed", "score", "evaluate", "generate", "diagnose", "finetune"])
def test_every_protein_command_says_which_directories_it_takes(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    expected = "a performers model or run directory, or a Hugging Face protein model directory"
    assert f"{expected} (ESM, ProtBert, ProtGPT2)" in text
