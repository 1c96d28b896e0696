"""``performers distill --fasta``: a protein teacher (a tiny ProtBert-style BERT masked LM, its
residues separated by spaces for its WordPiece tokenizer) distilled on the user's proteins, by
the command line and by :func:`performers.jobs.distillation.distill_model`."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertTokenizer

from performers import FavorConfig
from performers.cli import main
from performers.integrations.distill import DistillConfig, ProteinBatches, distillation_loss, make_student
from performers.integrations.transformers import load_hf_model
from performers.jobs.distillation import distill_model, read_proteins
from performers.proteins import read_fasta
from performers.utils import InputError

# ProtBert's vocabulary layout: specials, the residues, the rare residues.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"LAGVESIKRDTPNQFYMHCW", *"XUBZO"]
PROTEINS = {
    "p1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "p2": "MADEEKLPPGWEKRMSRSSGRVYYFNHITNASQW",
    "p3": "GSHMSLFDFFKNKGSAAATATDRLKLLHDLLEE",
    "p4": "MQIFVKTLTGKTITLEV",
    "p5": "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEG",
    "p6": "MVLSPADKTNVKAAWG",
}
STEPS = ["--steps", "6", "--batch-size", "4", "--max-length", "16", "--lr", "1e-3", "--warmup", "1"]
FAVOR = ["--num-features", "8", "--kernel", "relu", "--checkpoint-every", "3"]


def _write_fasta(path, proteins: dict[str, str]):
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in proteins.items()))
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A 2-layer BERT masked LM with a residue vocabulary, saved with its tokenizer."""
    directory = tmp_path_factory.mktemp("protbert")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        # Sharper attention than at initialization, and a larger share of each layer's output
        # (at BERT's initialization the residual path carries nearly all of it, and any kernel
        # would match the hidden states): the ReLU-kernel student starts measurably off.
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(5)
            layer.attention.self.key.weight.mul_(5)
            layer.attention.self.value.weight.mul_(10)
            layer.attention.output.dense.weight.mul_(10)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _hidden_error(teacher, student, batch) -> float:
    """The hidden-state MSE (every layer, real tokens) of ``student`` to ``teacher``."""
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True)
        s = student(**batch, output_hidden_states=True)
    return float(distillation_loss(t, s, batch["attention_mask"], DistillConfig(logit_weight=0))[0])


def _weights(directory) -> dict[str, torch.Tensor]:
    model, _ = load_hf_model(directory)
    return model.state_dict()


def test_distil_a_protein_teacher_on_a_fasta_resume_it_and_refuse_other_proteins(
    teacher_dir, tmp_path, cli_error
):
    fasta = _write_fasta(tmp_path / "train.fa", PROTEINS)
    out = tmp_path / "run"
    assert main(["distill", str(teacher_dir), "--out", str(out), "--fasta", str(fasta), *STEPS, *FAVOR]) == 0

    # The student saved in final/ is closer to the teacher than the converted model it started
    # as, on proteins it saw (random crops: the probe is another draw of the same data).
    teacher, tokenizer = load_hf_model(teacher_dir)
    probe = ProteinBatches(list(PROTEINS.values()), tokenizer, batch_size=6, max_length=16, seed=7)(0)
    start = make_student(teacher, FavorConfig(8, "relu"))
    student, _ = load_hf_model(out / "final")
    before, after = _hidden_error(teacher, start, probe), _hidden_error(teacher, student, probe)
    assert after < 0.8 * before, (before, after)

    # Other proteins: --resume refuses, naming --fasta.
    changed = _write_fasta(tmp_path / "other.fa", {**PROTEINS, "p6": "MVLSPADKTNVKAAWGK"})
    cli_error(
        ["distill", str(teacher_dir), "--out", str(out), "--fasta", str(changed), *STEPS, *FAVOR, "--resume"],
        match=r"--resume refused.*training proteins \(--fasta\)",
    )

    # Interrupted after the step-3 checkpoint, resumed from Python with the records in memory
    # (the same sequences: the same data identity): the same student, bit for bit.
    reference = _weights(out / "final")
    shutil.rmtree(out / "checkpoints" / "step-00000006")
    shutil.rmtree(out / "final")
    config = DistillConfig(
        steps=6, batch_size=4, max_length=16, learning_rate=1e-3, warmup_steps=1, checkpoint_every=3
    )
    result, final = distill_model(
        teacher_dir,
        config,
        FavorConfig(8, "relu"),
        out_dir=out,
        fasta=list(read_fasta(fasta)),
        resume=True,
    )
    assert result["steps"] == 6 and len(result["history"]) == 6
    resumed = _weights(final)
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name


def test_fasta_user_errors_are_one_line(teacher_dir, tmp_path, cli_error, capsys):
    fasta = _write_fasta(tmp_path / "train.fa", PROTEINS)
    texts = tmp_path / "texts.txt"
    texts.write_text("a sentence\n")
    with pytest.raises(SystemExit) as caught:
        main(["distill", str(teacher_dir), "--fasta", str(fasta), "--texts", str(texts)])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "performers distill: error: argument --texts: not allowed with argument --fasta"
    ]

    broken = tmp_path / "broken.fa"
    broken.write_text(">p1\nMKTAY\n>p2\nMK1TA\n")
    out = tmp_path / "run"
    cli_error(
        ["distill", str(teacher_dir), "--out", str(out), "--fasta", str(broken), "--steps", "1"],
        match=r"broken\.fa:4:.*'1'",
    )
    assert not (out / "checkpoints").exists()
    with pytest.raises(InputError, match="not both"):
        distill_model(teacher_dir, DistillConfig(), FavorConfig(8), out_dir=out, texts=texts, fasta=fasta)


def test_read_proteins_takes_a_file_records_or_strings(tmp_path):
    fasta = _write_fasta(tmp_path / "train.fa", PROTEINS)
    expected = list(PROTEINS.values())
    assert read_proteins(fasta) == read_proteins(str(fasta)) == expected
    assert read_proteins(read_fasta(fasta)) == read_proteins([s.lower() for s in expected]) == expected
    with pytest.raises(InputError, match="no proteins"):
        read_proteins([])
    with pytest.raises(InputError, match="protein 1 has no residues"):
        read_proteins(["MKT", ""])


def test_a_text_tokenizer_is_refused_for_proteins(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat"]) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    with pytest.raises(InputError, match="one known token per residue"):
        ProteinBatches(["MKT"], tokenizer, batch_size=1, max_length=8)
