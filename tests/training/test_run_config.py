"""Resume checks what it resumes: the run's configuration is stored in every checkpoint and a
resume with different options that change the computation is refused, every difference listed;
the options of SAFE_ON_RESUME may change. Same for distillation and for checkpoints written
before configurations were recorded."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM
from performers.cli import main
from performers.jobs.proteins import protein_trainer
from performers.training import SAFE_ON_RESUME, ResumeMismatchError, TrainingConfig
from performers.training.checkpoint import _meta_checksum
from tests.cli.test_proteins import TINY_TRAIN as TINY
from tests.training.test_trainer import TOK, config, motif_proteins


def trainer_for(out, *, d_model=32, kernel="softmax", dropout=0.1, log=None, **overrides):
    """A trainer of a tiny causal Performer (sizes and FAVOR options as given) into ``out``."""
    torch.manual_seed(0)
    model = PerformerForCausalLM(
        PerformerConfig(
            vocab_size=len(TOK),
            d_model=d_model,
            num_layers=2,
            num_heads=2,
            d_ff=64,
            max_position_embeddings=64,
            dropout=dropout,
            favor=FavorConfig(16, kernel=kernel, redraw_every=2),
            pad_token_id=TOK.pad_id,
        )
    )
    lines = [] if log is None else log
    return protein_trainer(
        model, TOK, motif_proteins(64), motif_proteins(8, seed=1), config(**overrides), out, log=lines.append
    )


@pytest.fixture
def stopped(tmp_path):
    """A run interrupted after step 3 (checkpoint step-00000003)."""
    trainer_for(tmp_path).fit(stop_at=3)
    return tmp_path


def refused(out, **options) -> ResumeMismatchError:
    trainer = trainer_for(out, **options)
    with pytest.raises(ResumeMismatchError) as caught:
        trainer.fit(resume=True)
    assert trainer.step == 0  # nothing was restored
    return caught.value


def test_a_different_learning_rate_is_refused_naming_it(stopped):
    error = refused(stopped, learning_rate=3e-4)
    assert "step-00000003: cannot resume" in str(error)
    assert "learning_rate 0.003 → 0.0003" in str(error)
    assert [c.key for c in error.changes] == ["training.learning_rate"]


def test_a_different_d_model_is_a_clear_error_not_a_load_state_dict_traceback(stopped):
    error = refused(stopped, d_model=64)
    assert "d_model 32 → 64" in str(error)
    assert not isinstance(error, RuntimeError)


def test_every_difference_that_changes_the_computation_is_listed(stopped):
    error = refused(stopped, kernel="relu", dropout=0.0, seed=3, batch_size=8, bf16=True)
    message = str(error)
    for change in (
        "favor.kernel softmax → relu",
        "dropout 0.1 → 0.0",
        "seed 0 → 3",
        "batch_size 4 → 8",
        "bf16 false → true",
    ):
        assert change in message, message


def test_another_task_or_data_is_refused(stopped):
    assert "task clm → mlm" in str(refused(stopped, task="mlm"))
    trainer_for(stopped / "data", data_identity={"train_sha256": "abc"}).fit(stop_at=3)
    error = refused(stopped / "data", data_identity={"train_sha256": "def"})
    assert "data_identity.train_sha256 abc → def" in str(error)


def test_safe_options_may_change_and_are_logged(tmp_path):
    full = trainer_for(tmp_path / "full", max_steps=8)
    full.fit()
    trainer_for(tmp_path / "split").fit(stop_at=3)  # max_steps 6
    lines = []
    trainer = trainer_for(
        tmp_path / "split", log=lines, max_steps=8, eval_every=4, eval_batches=1, log_every=1, keep_last=5
    )
    trainer.fit(resume=True)
    assert trainer.step == 8
    changed = next(line for line in lines if line.startswith("changed on resume"))
    assert "max_steps 6 → 8" in changed and "eval_every 3 → 4" in changed and "keep_last 3 → 5" in changed


def test_the_safe_list_names_only_recorded_options():
    recorded = {f"training.{f.name}" for f in dataclasses.fields(TrainingConfig)}
    recorded |= {f"model.config.favor.{f.name}" for f in dataclasses.fields(FavorConfig)}
    from performers.integrations.distill import DistillConfig

    recorded |= {f"distill.{f.name}" for f in dataclasses.fields(DistillConfig)}
    recorded |= {f"model.config.favor_config.{f.name}" for f in dataclasses.fields(FavorConfig)}
    assert SAFE_ON_RESUME <= recorded


def _as_format_1(meta_path):
    """Rewrite a checkpoint's meta.json as checkpoints before recorded runs did."""
    meta = json.loads(meta_path.read_text())
    meta["state"]["config"] = meta.pop("run")["training"]
    del meta["format"], meta["checksum"]
    meta_path.write_text(json.dumps(meta))


def test_a_checkpoint_without_a_stored_run_still_resumes(tmp_path):
    reference = trainer_for(tmp_path / "full")
    reference.fit()
    trainer_for(tmp_path / "old").fit(stop_at=3)
    _as_format_1(tmp_path / "old" / "checkpoints" / "step-00000003" / "meta.json")
    trainer = trainer_for(tmp_path / "old")
    with pytest.warns(UserWarning) as caught:
        trainer.fit(resume=True)
    assert [str(w.message).split("step-00000003")[1] for w in caught] == [
        "/meta.json: written before checkpoints checksummed meta.json; its contents are not verified",
        ": written before checkpoints recorded their run; only the training options are compared",
    ]
    assert trainer.step == 6
    for (name, a), (_, b) in zip(
        reference.model.state_dict().items(), trainer.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # Its training options are still compared; the model, not recorded, by its shapes.
    trainer_for(tmp_path / "older").fit(stop_at=3)
    _as_format_1(tmp_path / "older" / "checkpoints" / "step-00000003" / "meta.json")
    with pytest.warns(UserWarning, match="only the training options are compared|not verified"):
        assert "learning_rate 0.003 → 0.0003" in str(refused(tmp_path / "older", learning_rate=3e-4))
    with pytest.warns(UserWarning, match="only the training options are compared|not verified"):
        error = refused(tmp_path / "older", d_model=64)
    assert "the model's parameters differ" in str(error) and "(32,) → (64,)" in str(error)


def test_cli_resume_names_the_options_that_differ(tmp_path, capsys, cli_error):
    out = ["--out", str(tmp_path)]
    assert main([*TINY, *out]) == 0
    message = cli_error(
        [*TINY, *out, "--resume", "--steps", "4", "--lr", "0.0003", "--d-model", "32", "--kernel", "relu"]
    )
    assert message.startswith("performers train: error: ")
    assert "--resume refused" in message
    for change in ("--lr 0.002 → 0.0003", "--d-model 16 → 32", "--kernel softmax → relu"):
        assert change in message, message
    assert "--steps" not in message  # may change
    cli_error([*TINY, *out, "--resume", "--train-limit", "8"], match=re.escape("--train-limit 16 → 8"))
    message = cli_error(
        [*TINY, *out, "--resume", "--max-length", "48"], match=re.escape("--max-length 32 → 48")
    )
    assert message.count("--max-length") == 1  # one option, two fields: named once
    assert main([*TINY, *out, "--resume", "--steps", "3", "--eval-every", "3", "--workers", "1"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_checksummed_meta_keeps_the_run(stopped):
    meta = json.loads((stopped / "checkpoints" / "step-00000003" / "meta.json").read_text())
    assert meta["checksum"] == _meta_checksum(meta)
    assert meta["run"]["training"]["learning_rate"] == 3e-3 and "config" not in meta["state"]


# Distillation: the same checks (needs the [hf] extra).


def _distill_setup(**config):
    transformers = pytest.importorskip("transformers", reason="needs the [hf] extra")
    from performers.integrations.distill import DistillConfig, make_student

    torch.manual_seed(0)
    bert = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    teacher = transformers.BertModel(bert).eval()

    def batches(index):
        ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    options = dict(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=100)
    student = make_student(teacher, FavorConfig(8, "relu"))
    return teacher, student, batches, DistillConfig(**{**options, **config})


def test_distill_resume_refuses_other_options_and_extends_with_steps(tmp_path):
    from performers.integrations.distill import distill
    from performers.training import RunDirectoryError

    teacher, student, batches, config = _distill_setup()
    distill(teacher, student, batches, config, out_dir=tmp_path, stop_at=2, log=lambda _: None)
    teacher, student, batches, config = _distill_setup(learning_rate=1e-3, temperature=3.0)
    with pytest.raises(ResumeMismatchError, match=r"learning_rate 5e-05 → 0.001, temperature 2.0 → 3.0"):
        distill(teacher, student, batches, config, out_dir=tmp_path, resume=True, log=lambda _: None)
    with pytest.raises(RunDirectoryError, match="holds an earlier run"):
        distill(teacher, student, batches, config, out_dir=tmp_path, overwrite=False, log=lambda _: None)
    teacher, student, batches, config = _distill_setup(steps=6)
    lines = []
    result = distill(teacher, student, batches, config, out_dir=tmp_path, resume=True, log=lines.append)
    assert result["steps"] == 6 and any("steps 4 → 6" in line for line in lines)
