"""save_pretrained / from_pretrained: bit-for-bit round trip, atomic writes, clear errors, no pickle."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from performers import (
    FavorConfig,
    PerformerConfig,
    PerformerForCausalLM,
    PerformerForMaskedLM,
    from_pretrained,
)
from performers.models import PerformerModel, save_pretrained
from performers.models import io as performers_io
from performers.utils import load_safetensors

DT = torch.float64


LEGACY = Path(__file__).parents[1] / "data" / "legacy"


def tiny(favor: FavorConfig | None = None, **overrides):
    fields = {
        "vocab_size": 23,
        "d_model": 16,
        "num_layers": 2,
        "num_heads": 2,
        "d_ff": 32,
        "max_position_embeddings": 32,
        "dropout": 0.1,
        "favor": favor or FavorConfig(8),
        "pad_token_id": 0,
    }
    return PerformerConfig(**(fields | overrides))


def ids():
    return torch.randint(1, 23, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "cls,overrides,dtype",
    [
        (PerformerForCausalLM, {}, DT),
        (PerformerForCausalLM, {"tie_embeddings": False, "position": "rotary"}, torch.float32),
        (PerformerForMaskedLM, {"favor": FavorConfig(None, "relu")}, DT),
        (PerformerModel, {"attention": "exact"}, torch.float32),
    ],
)
def test_round_trip_is_bit_for_bit(tmp_path, cls, overrides, dtype):
    torch.manual_seed(0)
    model = cls(tiny(**overrides)).to(dtype)
    model.feature_redrawer().redraw()
    model.feature_redrawer(every=1).step()  # redraw_count 2, step_count 1
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is cls and not loaded.training
    assert loaded.config == model.config
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name, tensor in state.items():
        assert loaded_state[name].dtype == tensor.dtype and torch.equal(loaded_state[name], tensor), name
    assert all(int(m.redraw_count) == 2 and int(m.step_count) == 1 for m in loaded.favor_attention_modules())
    model.eval()
    a, b = model(ids()), loaded(ids())
    first = (lambda o: o.last_hidden_state) if cls is PerformerModel else (lambda o: o.logits)
    assert torch.equal(first(a), first(b))
    assert type(cls.from_pretrained(tmp_path)) is cls


def test_config_json_content_and_overrides(tmp_path):
    model = PerformerForCausalLM(tiny())
    save_pretrained(model, tmp_path / "nested" / "dir")
    raw = json.loads((tmp_path / "nested" / "dir" / "config.json").read_text())
    assert raw["architectures"] == ["PerformerForCausalLM"] and raw["favor"]["num_features"] == 8
    exact = from_pretrained(tmp_path / "nested" / "dir", attention="exact")
    assert exact.config.attention == "exact"
    assert all(m.attention == "exact" for m in exact.model.layers.modules() if hasattr(m, "favor"))
    model.save_pretrained(tmp_path / "nested" / "dir")  # overwriting works


def test_loading_never_unpickles(tmp_path, monkeypatch):
    PerformerForCausalLM(tiny()).save_pretrained(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    from_pretrained(tmp_path)


def test_truncated_file_is_a_clear_error(tmp_path):
    PerformerForCausalLM(tiny()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read the safetensors file"):
        from_pretrained(tmp_path)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupt or truncated"):
        from_pretrained(tmp_path)


def test_wrong_shape_and_missing_tensors_name_the_tensor(tmp_path):
    model = PerformerForCausalLM(tiny())
    model.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = dict(state)
    bad["model.layers.1.attn.favor.projection"] = torch.zeros(9, 8)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: tensor 'model\.layers\.1\.attn\.favor\.projection' "
    ):
        from_pretrained(tmp_path)
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'model\.norm\.weight' is missing"):
        from_pretrained(tmp_path)
    save_file(state | {"extra": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['extra'\]"):
        from_pretrained(tmp_path)
    kind = state | {"model.layers.0.attn.favor.redraw_count": torch.zeros((), dtype=torch.float32)}
    save_file(kind, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"redraw_count' has dtype torch.float32"):
        from_pretrained(tmp_path)


def test_config_mismatch_and_bad_config_files(tmp_path):
    PerformerForCausalLM(tiny()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.norm\.weight|has shape"):
        from_pretrained(tmp_path, d_model=32, num_heads=2)
    config = tmp_path / "config.json"
    config.write_text("{")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        from_pretrained(tmp_path)
    config.write_text(
        json.dumps(tiny().to_dict() | {"d_model": 15, "architectures": ["PerformerForCausalLM"]})
    )
    with pytest.raises(ValueError, match=r"config\.json: .*divisible"):
        from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        from_pretrained(tmp_path / "nowhere")


def test_failed_write_leaves_the_old_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    model = PerformerForCausalLM(tiny())
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash(path):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(performers_io, "atomic_write", _wrap_failing(performers_io.atomic_write, crash))
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def _wrap_failing(atomic_write, failing_writer):
    def wrapped(path, write, **options):
        return atomic_write(path, failing_writer, **options)

    return wrapped


@pytest.mark.parametrize(
    "name", ["performer_causal_favorpp", "performer_mlm_relu_noproj", "performer_mlm_softmax_sqrtd"]
)
def test_models_saved_by_performers_0_1_0_still_load(name):
    """config.json files written by save_pretrained before FavorConfig (flat FAVOR fields), made by
    tests/data/legacy/make_fixtures.py with the 0.1.0 code: same config, same outputs."""
    directory = LEGACY / name
    raw = json.loads((directory / "config.json").read_text())
    assert "favor" not in raw and "kernel" in raw  # the old, flat layout
    model = from_pretrained(directory)
    favor = model.config.favor
    assert favor.kernel == raw["kernel"] and favor.seed == raw["seed"]
    assert favor.projection == raw["projection_kind"] and favor.row_norms == raw["row_norms"]
    assert favor.num_features == (raw["num_features"] or None)
    assert favor.redraw_every == (raw["redraw_every"] or 0)
    assert all(int(m.redraw_count) == 1 for m in model.favor_attention_modules())
    expected, _ = load_safetensors(directory / "expected.safetensors")
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    # Same outputs up to float32 rounding: the bidirectional paths now keep one key maximum per
    # feature (no zero rows at large logits), which changes the order of rounding, not the value.
    bound = 16 * torch.finfo(torch.float32).eps * expected["logits"].abs().max().item()
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=bound)
    # Saved again, it is written in today's layout and reads back the same.
    assert PerformerConfig.from_dict(json.loads(model.config.to_json())) == model.config


def test_saved_files_follow_the_umask(tmp_path):
    """Temporary files are private (0600); the saved files get the umask's permissions."""
    old = os.umask(0o022)
    try:
        PerformerForCausalLM(tiny()).save_pretrained(tmp_path)
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
