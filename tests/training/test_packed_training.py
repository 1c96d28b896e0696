"""Packed training (``TrainingConfig(pack=True)``, ``performers train --pack``).

Packing changes the layout of a step's examples, not which examples a step trains on: the
packed run must follow the unpacked one step for step (same losses, same parameters up to the
rounding of a different summation order), resume bit for bit, and report less padding.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM
from performers.jobs.proteins import protein_trainer
from performers.proteins import LanguageModelExamples, ProteinTokenizer
from performers.training import PackedCollate, ResumeMismatchError, TrainingConfig
from performers.training.loader import batch_loader
from performers.utils import IGNORE_INDEX

TOK = ProteinTokenizer()
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def proteins(n: int, low: int, high: int, seed: int = 0) -> list[str]:
    """Proteins of random lengths in ``[low, high)`` residues (packing needs unequal lengths)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high, (n,), generator=g).tolist()
    return ["".join(AMINO[i] for i in torch.randint(0, 20, (k,), generator=g).tolist()) for k in lengths]


def tiny_model(task: str):
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=len(TOK),
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=32,
        dropout=0.0,  # dropout masks follow the layout; without it the layouts compute one function
        favor=FavorConfig(8, redraw_every=2),
        pad_token_id=TOK.pad_id,
    )
    return (PerformerForCausalLM if task == "clm" else PerformerForMaskedLM)(config).double()


def run(tmp, task: str, train: list[str], *, stop_at=None, resume=False, **overrides):
    options = dict(
        task=task,
        max_steps=4,
        batch_size=4,
        max_length=32,
        warmup_steps=1,
        eval_every=100,
        eval_batches=1,
        checkpoint_every=2,
        log_every=100,
        learning_rate=3e-3,
        tensorboard=False,
    )
    model = tiny_model(task)
    config = TrainingConfig(**{**options, **overrides})
    trainer = protein_trainer(model, TOK, train, train[:4], config, tmp, log=lambda _: None)
    trainer.fit(resume=resume, stop_at=stop_at)
    records = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    return model, records


# Short proteins: several per row of 32 tokens. Long ones (17-30 tokens with cls/eos): one per row.
LENGTHS = {"several per row": (3, 14), "one per row": (15, 28)}


@pytest.mark.parametrize("task", ["mlm", "clm"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_packed_training_follows_unpacked_step_for_step(tmp_path, task, lengths):
    train = proteins(16, *LENGTHS[lengths])
    plain, plain_records = run(tmp_path / "plain", task, train)
    packed, packed_records = run(tmp_path / "packed", task, train, pack=True)
    # The loss is the mean over the same real labelled tokens in either layout. (The model is
    # float64; the trainer's cross-entropy runs in float32, whose sums in another order differ
    # by ~1e-7: the tolerances. A layout that let proteins see each other, or lost or
    # double-counted a token, differs by orders of magnitude more.)
    for a, b in zip(plain_records, packed_records, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), a["step"]
    # The gradients flow in float64: the parameters agree to ~1e-15 (measured).
    for (name, a), (_, b) in zip(plain.state_dict().items(), packed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=name)


def test_padding_fraction_is_reported_and_packing_removes_it(tmp_path):
    # Mixed lengths (one long protein pads a whole unpacked batch), 8 proteins a step.
    train = proteins(16, 3, 28)
    _, plain = run(tmp_path / "plain", "mlm", train, batch_size=8, max_steps=2)
    _, packed = run(tmp_path / "packed", "mlm", train, batch_size=8, max_steps=2, pack=True)
    # The unpacked fraction is that of the step's examples padded to the longest.
    data = LanguageModelExamples(train, TOK, task="mlm", max_length=32)
    first = next(batch_loader(data, batch_size=8, seed=0))
    real, positions = int(first["attention_mask"].sum()), first["input_ids"].numel()
    assert plain[0]["padding_fraction"] == pytest.approx(1 - real / positions)
    for a, b in zip(plain, packed, strict=True):
        assert 0 < a["padding_fraction"] < 1 and b["padding_fraction"] == 0
        assert b["tokens_per_second"] > 0


def test_a_packed_row_holds_the_examples_end_to_end_without_padding():
    data = LanguageModelExamples(proteins(8, 3, 14), TOK, task="mlm", max_length=32)
    collate = PackedCollate(32)
    from performers.training import RandomStreams

    examples = [data.example(i, RandomStreams(0, 0, i)) for i in range(8)]
    lengths = [e["input_ids"].shape[1] for e in examples]
    assert len(set(lengths)) > 1  # mixed lengths: padded, this batch would hold padding
    batch = collate(examples)
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert bool(batch["attention_mask"].all())
    assert batch["cu_seqlens"].dtype == torch.int32
    offsets = batch["cu_seqlens"].tolist()
    assert offsets == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    # The examples sit in order, whole, each between two offsets.
    for (start, end), example in zip(itertools.pairwise(offsets), examples, strict=True):
        torch.testing.assert_close(batch["input_ids"][0, start:end], example["input_ids"][0].long())
        torch.testing.assert_close(batch["labels"][0, start:end], example["labels"][0].long())
    causal = PackedCollate(32, causal=True)(examples)
    # No example's first token is predicted from the example before it.
    assert (causal["labels"][0, offsets[:-1]] == IGNORE_INDEX).all()
    rest = torch.ones(sum(lengths), dtype=torch.bool)
    rest[offsets[:-1]] = False
    torch.testing.assert_close(causal["labels"][0, rest], batch["labels"][0, rest])
    with pytest.raises(ValueError, match="longer than the packed batches' max_length 8"):
        PackedCollate(8)(examples)
    with pytest.raises(ValueError, match="at least one example"):
        collate([])


def test_packed_batches_are_the_same_with_loader_workers():
    data = LanguageModelExamples(proteins(12, 3, 14), TOK, task="clm", max_length=32)
    pack = PackedCollate(32, causal=True)
    alone = batch_loader(data, batch_size=4, seed=3, epoch=0, position=4, pack=pack)
    workers = batch_loader(data, batch_size=4, seed=3, epoch=0, position=4, pack=pack, num_workers=1)
    for _ in range(3):  # crosses into the next epoch
        a, b = next(alone), next(workers)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_pack_is_bit_identical(tmp_path):
    train = proteins(16, 3, 14)
    full, _ = run(tmp_path / "full", "mlm", train, pack=True)
    run(tmp_path / "split", "mlm", train, pack=True, stop_at=2)
    resumed, records = run(tmp_path / "split", "mlm", train, pack=True, resume=True)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_resume_that_changes_pack_is_refused(tmp_path):
    train = proteins(16, 3, 14)
    run(tmp_path, "mlm", train, pack=True, stop_at=2)
    with pytest.raises(ResumeMismatchError, match="pack true → false"):
        run(tmp_path, "mlm", train, resume=True)


def test_pack_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="pack needs a language-model task"):
        TrainingConfig(pack=True, concatenate=True)
    with pytest.raises(ValueError, match="pack needs a language-model task"):
        TrainingConfig(pack=True, task="regression")


def test_train_command_takes_pack_and_names_it_on_resume():
    from performers.cli import build_parser
    from performers.cli.train import option_of

    parser = build_parser()
    args = parser.parse_args(["train", "--pack"])
    assert args.pack is True
    assert option_of(args.command_parser)["training.pack"] == "--pack"
