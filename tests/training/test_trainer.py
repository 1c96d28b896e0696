import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM
from performers.jobs import evaluate_model, protein_evaluator
from performers.jobs.proteins import protein_trainer
from performers.proteins import (
    LanguageModelExamples,
    PreparedDataset,
    ProteinTokenizer,
    UnigramBaseline,
    prepare,
)
from performers.training import (
    RunDirectoryError,
    Trainer,
    TrainingConfig,
    latest_checkpoint,
    save_checkpoint,
)

TOK = ProteinTokenizer()


def motif_proteins(n: int, seed: int = 0) -> list[str]:
    """Sequences built from a few repeated motifs: learnable structure for a tiny model."""
    g = torch.Generator().manual_seed(seed)
    motifs = ["ACDEFG", "HIKLMN", "PQRSTV", "WYACDE"]
    return ["".join(motifs[i] for i in torch.randint(0, 4, (8,), generator=g).tolist()) for _ in range(n)]


def tiny_model(task: str, seed: int = 0):
    torch.manual_seed(seed)
    config = PerformerConfig(
        vocab_size=len(TOK),
        d_model=32,
        num_layers=2,
        num_heads=2,
        d_ff=64,
        max_position_embeddings=64,
        dropout=0.1,
        favor=FavorConfig(16, redraw_every=2),
        pad_token_id=TOK.pad_id,
    )
    return (PerformerForCausalLM if task == "clm" else PerformerForMaskedLM)(config)


def config(**overrides) -> TrainingConfig:
    base = dict(
        task="clm",
        max_steps=6,
        batch_size=4,
        max_length=40,
        warmup_steps=2,
        eval_every=3,
        eval_batches=2,
        checkpoint_every=3,
        log_every=100,
        learning_rate=3e-3,
    )
    return TrainingConfig(**{**base, **overrides})


def run(tmp, task="clm", resume=False, stop_at=None, prepared=None, device="cpu", **overrides):
    """Train the tiny model on the motif proteins, in memory or from a prepared copy of them."""
    model = tiny_model(task).to(device)
    train, valid = motif_proteins(64), motif_proteins(8, seed=1)
    if prepared is not None:
        train, valid = PreparedDataset(prepared, "train"), PreparedDataset(prepared, "valid")
    trainer = protein_trainer(
        model, TOK, train, valid, config(task=task, **overrides), tmp, log=lambda _: None
    )
    trainer.fit(resume=resume, stop_at=stop_at)
    return model, trainer


def evaluate(trainer, sequences):
    """The run's test-style evaluation (all batches) of ``sequences``."""
    return protein_evaluator(TOK, sequences, trainer.config)(trainer.model)


@pytest.mark.parametrize("task", ["clm", "mlm"])
def test_resume_is_bit_identical(tmp_path, task):
    full, _ = run(tmp_path / "full", task)
    run(tmp_path / "split", task, stop_at=3)
    resumed, trainer = run(tmp_path / "split", task, resume=True)
    assert trainer.step == 6
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.fixture
def deterministic_cuda(monkeypatch):
    """PyTorch's deterministic CUDA algorithms (embedding backward adds with atomics otherwise,
    in an order that differs between runs); cuBLAS needs a fixed workspace for it."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # (warn_only: an operation without a deterministic form is named in a warning; the
    # comparison then says whether it mattered.)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_a_gpu_resumes_bit_identically(tmp_path, bf16, deterministic_cuda):
    # Batches move to the model's device, autocast follows it, and checkpoints keep the GPU's
    # generator (dropout masks) beside the CPU's: with deterministic kernels (the Triton ones
    # are: no atomics) a resumed run ends exactly where an uninterrupted one does.
    full, _ = run(tmp_path / "full", "mlm", device="cuda", bf16=bf16)
    run(tmp_path / "split", "mlm", device="cuda", bf16=bf16, stop_at=3)
    resumed, trainer = run(tmp_path / "split", "mlm", device="cuda", bf16=bf16, resume=True)
    assert trainer.step == 6 and next(resumed.parameters()).is_cuda
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert evaluate(trainer, motif_proteins(8, seed=1))["tokens"] > 0


def test_training_beats_the_unigram_baseline(tmp_path):
    _, trainer = run(tmp_path, "clm", max_steps=120, eval_every=120, eval_batches=4)
    result = evaluate(trainer, motif_proteins(8, seed=1))
    baseline = UnigramBaseline(motif_proteins(64), TOK).evaluate(motif_proteins(8, seed=1))
    assert result["perplexity"] < baseline["perplexity"] * 0.8
    assert result["accuracy"] > baseline["accuracy"] + 0.1


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    run(tmp_path, "clm")
    directory = tmp_path / "checkpoints"
    assert sorted(p.name for p in directory.iterdir()) == ["step-00000003", "step-00000006"]
    weights = directory / "step-00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"step-00000006.*checksum mismatch"):
        checkpoint = latest_checkpoint(directory)
    assert checkpoint.step == 3


def test_keep_last_and_atomic_directory(tmp_path):
    model = tiny_model("clm")
    optimizer = torch.optim.AdamW(model.parameters())
    for step in range(1, 6):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=optimizer, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000005"]


SCRIPT = """
import sys
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {tests!r})
from tests.training.test_trainer import run
run({out!r}, "clm", resume=True, max_steps=40, checkpoint_every=1, prepared={prepared!r})
"""


def _prepared_motifs(directory: Path) -> Path:
    """The motif proteins of :func:`run` as a prepared dataset (same records, same order)."""
    files = {}
    for split, proteins in (("train", motif_proteins(64)), ("valid", motif_proteins(8, seed=1))):
        files[split] = directory / f"{split}.fasta"
        files[split].write_text("".join(f">{split}{i}\n{p}\n" for i, p in enumerate(proteins)))
    prepare({k: [v] for k, v in files.items()}, directory / "prepared", log=None)
    return directory / "prepared"


@pytest.mark.parametrize("data", ["memory", "prepared"])
def test_sigkill_and_resume_match_an_uninterrupted_run(tmp_path, data):
    prepared = _prepared_motifs(tmp_path) if data == "prepared" else None
    reference, _ = run(tmp_path / "reference", "clm", max_steps=40, checkpoint_every=1)  # in memory
    out = tmp_path / "killed"
    # The same thread count as this process: float reductions depend on it.
    code = SCRIPT.format(
        tests=str(Path(__file__).resolve().parents[2]),  # the repository root: tests is a package
        out=str(out),
        threads=torch.get_num_threads(),
        prepared=prepared and str(prepared),
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-00000005").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training subprocess ended early"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(out / "checkpoints").step < 40
    resumed, trainer = run(out, "clm", resume=True, max_steps=40, checkpoint_every=1, prepared=prepared)
    assert trainer.step == 40
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("task", ["clm", "mlm"])
def test_concatenated_windows_train_on_full_windows_and_resume_exactly(tmp_path, task):
    # motif proteins are 48 residues + <cls>,<eos>: 64 of them make 3200 tokens = 80 windows of 40.
    full, trainer = run(tmp_path / "full", task, concatenate=True)
    batch = trainer._next_batch()
    assert batch["input_ids"].shape == (4, 40)
    assert bool(batch["attention_mask"].all())  # a window is never padded
    separators = (batch["input_ids"] == TOK.cls_id) | (batch["input_ids"] == TOK.eos_id)
    assert bool(separators.any())  # windows cross protein boundaries
    if task == "mlm":  # separators are never masked
        assert bool((batch["labels"][separators] == -100).all())
    run(tmp_path / "split", task, stop_at=3, concatenate=True)
    resumed, _ = run(tmp_path / "split", task, resume=True, concatenate=True)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    result = evaluate(trainer, motif_proteins(8, seed=1))
    # 8 proteins of 50 tokens = 400 tokens = 10 windows of 40: every position is evaluated (clm:
    # 39 next tokens per window).
    if task == "clm":
        assert result["tokens"] == 10 * 39


def test_concatenated_data_too_small_for_one_batch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        protein_trainer(
            tiny_model("clm"),
            TOK,
            motif_proteins(2),
            motif_proteins(2),
            config(concatenate=True, max_length=64),
            tmp_path,
        )
    with pytest.raises(ValueError, match="no window of 4096 tokens"):
        evaluate_model(
            tiny_model("clm"), TOK, motif_proteins(2), task="clm", max_length=4096, concatenate=True
        )


def test_metrics_go_to_tensorboard_when_asked(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (make test installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, "clm", tensorboard=True)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "step_seconds", "valid_accuracy"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == [r["step"] for r in logged]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [e.step for e in events.Scalars("valid_accuracy")] == [3, 6]


def test_no_tensorboard_files_when_turned_off(tmp_path):
    run(tmp_path, "clm", tensorboard=False, max_steps=2)
    assert not (tmp_path / "tensorboard").exists()


def test_a_fresh_run_in_a_used_directory_refuses_or_moves_the_old_run_aside(tmp_path):
    lines = []
    run(tmp_path, "clm", max_steps=3)

    def fresh(**fit):
        trainer = protein_trainer(
            tiny_model("clm"),
            TOK,
            motif_proteins(64),
            motif_proteins(8, seed=1),
            config(max_steps=2),
            tmp_path,
            log=lines.append,
        )
        trainer.fit(**fit)

    with pytest.raises(RunDirectoryError, match=r"earlier run \(checkpoints step-00000003\).*--overwrite"):
        fresh(overwrite=False)
    with pytest.warns(UserWarning, match=r"held an earlier run \(checkpoints step-00000003\), moved to"):
        fresh()  # the Python default: moved aside, with a warning
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # not [1, 2, 3, 1, 2]
    (old,) = tmp_path.parent.glob(f"{tmp_path.name}.old-*")
    assert any(f"moved the earlier run to {old}" in line for line in lines)
    assert [p.name for p in (old / "checkpoints").iterdir()] == ["step-00000003"]  # kept, not lost
    fresh(overwrite=True)  # asked for: no warning
    assert len(list(tmp_path.parent.glob(f"{tmp_path.name}.old-*"))) == 2
    _, stopped = run(tmp_path / "zero", "clm", stop_at=0)
    assert stopped.step == 0  # stop_at=0 means "stop before the first step", not "no stop"


class CountingExamples:
    """A data set that is not about proteins: predict each token's successor (mod V)."""

    def __init__(self, n: int, vocab: int = 11, length: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(1, vocab, (n, length), generator=g)
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.data)

    def example(self, index, streams):
        ids = self.data[index : index + 1]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": ids % (self.vocab - 1) + 1,
        }

    def collate(self, examples):
        return {k: torch.cat([e[k] for e in examples]) for k in examples[0]}


def test_the_trainer_takes_any_example_source_and_steps_the_redrawer(tmp_path):
    from performers.training import ExampleSource, evaluate_tokens

    data = CountingExamples(32)
    assert isinstance(data, ExampleSource)
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=11,
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=16,
        dropout=0.0,
        favor=FavorConfig(8, redraw_every=3),
    )
    model = PerformerForMaskedLM(config)
    training = TrainingConfig(
        task="tokens",
        max_steps=7,
        batch_size=8,
        learning_rate=1e-2,
        warmup_steps=0,
        eval_every=7,
        checkpoint_every=7,
        log_every=100,
    )
    before = evaluate_tokens(model, [data.collate([data.example(i, None) for i in range(32)])], causal=False)
    trainer = Trainer(
        model,
        data,
        training,
        tmp_path,
        evaluate=lambda m: evaluate_tokens(
            m, [data.collate([data.example(i, None) for i in range(32)])], causal=False
        ),
        log=lambda _: None,
    )
    result = trainer.fit()
    assert result["accuracy"] > before["accuracy"] and result["tokens"] == 32 * 12
    assert [int(m.redraw_count) for m in model.favor_attention_modules()] == [2]  # steps 3 and 6


def test_language_model_examples_are_those_of_the_seeded_streams():
    from performers.training import RandomStreams

    data = LanguageModelExamples(motif_proteins(8), TOK, task="mlm", max_length=20)
    a = data.example(3, RandomStreams(0, 1, 5))
    b = data.example(3, RandomStreams(0, 1, 5))
    c = data.example(3, RandomStreams(0, 1, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    batch = data.collate([a, c])
    assert batch["input_ids"].shape == (2, 20)


def test_loader_workers_give_the_same_batches_and_the_same_run(tmp_path):
    from performers.training.loader import batch_loader

    data = LanguageModelExamples(motif_proteins(16), TOK, task="mlm", max_length=20)
    alone = batch_loader(data, batch_size=4, seed=3, epoch=1, position=8)
    workers = batch_loader(data, batch_size=4, seed=3, epoch=1, position=8, num_workers=2)
    rank1 = batch_loader(data, batch_size=4, seed=3, epoch=1, position=8, rank=1, world=2)
    for _ in range(6):  # crosses into the next epoch
        a, b, half = next(alone), next(workers), next(rank1)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(half["labels"], a["labels"][1::2, : half["labels"].shape[1]])
    del workers
    state = torch.get_rng_state()
    next(batch_loader(data, batch_size=4, seed=3, num_workers=1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (dropout's) is untouched
    serial, _ = run(tmp_path / "serial", "mlm")
    parallel, _ = run(tmp_path / "parallel", "mlm", num_workers=2)
    for (name, a), (_, b) in zip(serial.state_dict().items(), parallel.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
