"""The jobs as Python functions (what the CLI commands call)."""

import os
import stat

import torch

from performers import FavorConfig, PerformerModel
from performers.jobs import finetune, load_trained, protein_model_config, run_training
from performers.proteins import load_shipped_task
from performers.training import TrainingConfig, save_checkpoint


def test_run_training_is_the_train_command_as_a_function(tmp_path):
    config = protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=32, favor=FavorConfig(8)
    )
    training = TrainingConfig(
        task="clm", max_steps=2, batch_size=4, max_length=32, eval_every=2, log_every=100
    )
    result = run_training(
        config, training, out_dir=tmp_path, name="tiny", train_limit=16, test_limit=4, log=lambda _: None
    )
    assert result.name == "tiny" and 0 <= result.test["accuracy"] <= 1
    model, tokenizer = load_trained(tmp_path)
    assert model.config == config and len(tokenizer) == config.vocab_size
    assert model.config.favor.seed == 0 and type(model).__name__ == "PerformerForCausalLM"


def test_finetune_redraws_the_encoders_features_on_their_schedule(tmp_path):
    config = protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=32, favor=FavorConfig(8, redraw_every=2)
    )
    torch.manual_seed(0)
    encoder = PerformerModel(config)
    (favor,) = encoder.favor_attention_modules()
    before = favor.projection.clone()
    training = TrainingConfig(
        max_steps=5, batch_size=4, max_length=32, eval_every=5, eval_batches=1, log_every=100
    )
    limits = {"train": 16, "valid": 4, "test": 4}
    splits = {s: load_shipped_task("secondary_structure", s, n) for s, n in limits.items()}
    result = finetune(encoder, training, **splits, out_dir=tmp_path, log=lambda _: None)
    assert result["steps"] == 5 and 0 <= result["test"]["q3"] <= 1 and 0 <= result["valid"]["q3"] <= 1
    assert int(favor.step_count) == 5 and int(favor.redraw_count) == 2  # steps 2 and 4
    assert not torch.equal(favor.projection, before)
    assert (tmp_path / "checkpoints" / "step-00000005").is_dir()


def test_finetune_sequence_regression_learns_gb1_fitness_ranks(tmp_path):
    """A sequence-level head on GB1 (FLIP's sampled split): the loop trains a regressor whose
    test Spearman is computed on held-out variants (tiny budget: the number is only a check)."""
    config = protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=272, favor=FavorConfig(8)
    )
    torch.manual_seed(0)
    encoder = PerformerModel(config)
    splits = {s: load_shipped_task("gb1", s, 64) for s in ("train", "valid", "test")}
    training = TrainingConfig(
        max_steps=6, batch_size=8, max_length=272, learning_rate=3e-3, warmup_steps=0, eval_every=3,
        eval_batches=2, log_every=100,
    )  # fmt: skip
    result = finetune(encoder, training, **splits, out_dir=tmp_path, log=lambda _: None)
    assert set(result["test"]) == {"spearman", "mse", "proteins"} and result["test"]["proteins"] == 64
    assert -1 <= result["test"]["spearman"] <= 1 and result["valid"]["proteins"] == 16
    records = [
        line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "valid_spearman" in line
    ]
    assert len(records) == 2  # steps 3 and 6


def test_checkpoint_files_follow_the_umask(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    for file in path.iterdir():
        assert stat.S_IMODE(os.stat(file).st_mode) == 0o644, file.name
