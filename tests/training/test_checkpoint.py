"""Checkpoints are verified: meta.json is checksummed and checked against a schema, a failing
checkpoint falls back to the previous one with a warning naming the file and the reason, a torn
metrics line is tolerated, and a resume with nothing usable says so (not "pass --resume")."""

from __future__ import annotations

import json

import pytest
import torch

from performers.training import NoUsableCheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from tests.training.test_trainer import run, tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 6-step run (checkpoints at steps 3 and 6), copied fresh for each test."""
    out = tmp_path_factory.mktemp("trained")
    run(out, "clm")
    return out


@pytest.fixture
def out(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _meta(out, step=6):
    return out / "checkpoints" / f"step-{step:08d}" / "meta.json"


def _edit(out, change, step=6):
    """Rewrite checkpoint ``step``'s meta.json as valid JSON after ``change(meta)``."""
    meta = json.loads(_meta(out, step).read_text())
    change(meta)
    _meta(out, step).write_text(json.dumps(meta, indent=1))


def _falls_back(out, reason):
    with pytest.warns(UserWarning, match=reason):
        checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint.step == 3
    return checkpoint


def test_an_edited_step_falls_back_naming_the_file(out):
    _edit(out, lambda meta: meta.update(step=17))
    _falls_back(out, r"step-00000006/meta\.json: says step 17, its directory is step-00000006")
    # Under a name that does not say the step (a copy), the checksum catches the edit.
    (out / "checkpoints" / "step-00000006").rename(out / "best")
    with pytest.raises(ValueError, match=r"best/meta\.json: checksum mismatch"):
        load_checkpoint(out / "best")


def test_an_edited_learning_rate_or_position_falls_back(out):
    def edit(meta):
        meta["optimizer"]["param_groups"][0]["lr"] = 1.0

    _edit(out, edit)
    _falls_back(out, r"step-00000006/meta\.json: checksum mismatch")
    _edit(out, lambda meta: meta["state"].update(position=0), step=3)
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(out / "checkpoints") is None
    assert [str(w.message).split("checkpoints/")[1] for w in caught] == [
        "step-00000006/meta.json: checksum mismatch (edited or corrupt)",
        "step-00000003/meta.json: checksum mismatch (edited or corrupt)",
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda meta: meta.pop("scheduler"), r"missing key 'scheduler'"),
        (lambda meta: meta.update(step="6"), r"'step' must be int, got str"),
        (lambda meta: meta.update(step=6.0), r"'step' must be int, got float"),
        (lambda meta: meta.update(step=True), r"'step' must be int, got bool"),
        (lambda meta: meta["sha256"].pop("rng.safetensors"), r"'sha256': missing key 'rng.safetensors'"),
        (lambda meta: meta.update(extra=1), r"unexpected key\(s\) \['extra'\]"),
        (lambda meta: meta.update(format=3), r"format 3"),
        (lambda meta: meta.pop("format"), r"missing key 'format'"),  # not taken for format 1
    ],
)
def test_a_meta_json_off_its_schema_falls_back(out, change, reason):
    _edit(out, change)
    _falls_back(out, rf"step-00000006/meta\.json.*{reason}")


def test_a_torn_meta_json_falls_back(out):
    _meta(out).write_text(_meta(out).read_text()[:50])
    _falls_back(out, r"step-00000006/meta\.json: not valid JSON")


def test_the_checksum_ignores_layout_and_the_run_is_recorded(out):
    meta = json.loads(_meta(out).read_text())
    _meta(out).write_text(json.dumps(meta, indent=4, sort_keys=True))  # re-indented: same values
    checkpoint = load_checkpoint(out / "checkpoints" / "step-00000006")
    assert checkpoint.step == 6 and checkpoint.format == 2
    assert checkpoint.run["training"]["learning_rate"] == 3e-3
    assert checkpoint.run["model"]["class"] == "PerformerForCausalLM"
    assert checkpoint.run["model"]["config"]["d_model"] == 32


def _as_format_1(meta):
    """What checkpoints before meta.json checksums wrote: no format, run or checksum; the
    trainer's options in its state."""
    run = meta.pop("run")
    del meta["format"], meta["checksum"]
    meta["state"]["config"] = run["training"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda meta: meta.pop("optimizer"), r"missing key 'optimizer'"),
        (lambda meta: meta.update(step="6"), r"'step' must be int, got str"),
        (lambda meta: meta.update(step=17), r"says step 17, its directory is step-00000006"),
        (lambda meta: meta["state"].pop("position"), r"'state': missing key 'position'"),
        (lambda meta: meta["optimizer"].update(plain_state=[]), r"'plain_state' must be dict"),
    ],
)
def test_a_format_1_checkpoint_is_checked_against_its_schema(out, change, reason):
    def legacy(meta):
        _as_format_1(meta)
        change(meta)

    _edit(out, legacy)
    _edit(out, _as_format_1, step=3)
    with pytest.warns(UserWarning) as caught:
        checkpoint = latest_checkpoint(out / "checkpoints", state_schema={"epoch": int, "position": int})
    assert checkpoint.step == 3 and checkpoint.run is None and checkpoint.format == 1
    messages = [str(w.message) for w in caught]
    assert any("step-00000006/meta.json" in m and reason.replace("\\", "") in m for m in messages), messages
    assert any("step-00000003/meta.json: written before" in m and "not verified" in m for m in messages)


def test_a_torn_last_metrics_line_is_tolerated_on_resume(tmp_path):
    run(tmp_path, "clm", stop_at=3)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 4, "loss": 2.')  # killed mid-write
    _, trainer = run(tmp_path, "clm", resume=True)
    assert trainer.step == 6
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_every_checkpoint_corrupt_refuses_the_resume_without_saying_pass_resume(out, capsys, cli_error):
    for step in (3, 6):
        weights = out / "checkpoints" / f"step-{step:08d}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match="skipping unusable checkpoint"):
        with pytest.raises(NoUsableCheckpointError) as caught:
            run(out, "clm", resume=True)
    message = str(caught.value)
    assert "step-00000006/model.safetensors: checksum mismatch" in message
    assert "step-00000003/model.safetensors: checksum mismatch" in message
    assert "--overwrite" in message and "pass --resume" not in message and "resume=True" not in message
    with pytest.warns(UserWarning):
        line = cli_error(["train", "--out", str(out), "--resume", "--steps", "2", "--threads", "1"])
    assert "every checkpoint is unusable" in line and "pass --resume" not in line


def test_a_malformed_optimizer_tensor_name_is_a_checkpoint_error(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("clm")
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    save_file({"state": torch.zeros(1)}, str(path / "optimizer.safetensors"))

    def refresh(meta):
        from performers.training.checkpoint import _meta_checksum
        from performers.utils import sha256

        meta["sha256"]["optimizer.safetensors"] = sha256(path / "optimizer.safetensors")
        meta["checksum"] = _meta_checksum(meta)

    meta = json.loads((path / "meta.json").read_text())
    refresh(meta)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="optimizer state does not read back"):
        load_checkpoint(path)


class _Tied(torch.nn.Module):
    """An embedding and a decoder sharing one weight, as a masked LM's head does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.decoder = torch.nn.Linear(3, 5, bias=False)
        self.decoder.weight = self.embed.weight


def test_tied_weights_are_saved_and_restored_still_tied(tmp_path):
    from performers.training import restore

    torch.manual_seed(0)
    model = _Tied()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model["embed.weight"], model.embed.weight.detach())
    assert torch.equal(loaded.model["decoder.weight"], model.embed.weight.detach())

    other = _Tied()
    restore(loaded, other, torch.optim.AdamW(other.parameters()))
    assert other.decoder.weight is other.embed.weight
    assert torch.equal(other.embed.weight, model.embed.weight)
