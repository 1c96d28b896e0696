"""Loads never guess (issue 16, item 4): a saved config missing a field that changes the model is
an error naming the field; fields added by later formats take the values the older models were
computed with (the legacy fixtures keep loading with identical outputs); a converted Hugging Face
model reloads as FAVOR+ (or refuses) instead of silently running softmax."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from performers import (
    FavorConfig,
    PerformerConfig,
    PerformerForCausalLM,
    PerformerForMaskedLM,
    from_pretrained,
)
from performers.layers import ConfigError
from performers.layers.favor_config import ADDED_FIELDS, FAVOR_FORMAT, favor_config_from_saved
from performers.models import ModelLoadError
from performers.models.config import CONFIG_FORMAT, CONFIG_FORMAT_KEY
from performers.utils import load_safetensors

LEGACY = Path(__file__).parents[1] / "data" / "legacy"
PERFORMER_FIXTURES = ["performer_causal_favorpp", "performer_mlm_relu_noproj", "performer_mlm_softmax_sqrtd"]


def tiny(**overrides) -> PerformerConfig:
    fields = {
        "vocab_size": 23,
        "d_model": 16,
        "num_layers": 1,
        "num_heads": 2,
        "d_ff": 32,
        "max_position_embeddings": 32,
        "dropout": 0.0,
        "activation": "relu",  # not the default: a loader that guessed would change the logits
        "favor": FavorConfig(8, kernel="softmax-hyperbolic", chunk_size=4, block_size=8),
    }
    return PerformerConfig(**(fields | overrides))


def saved(tmp_path: Path, cls=PerformerForCausalLM, **overrides) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = cls(tiny(**overrides)).eval()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


def edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


# ---------------------------------------------------------------------------------------------
# Performer models


def test_config_json_records_its_format(tmp_path):
    directory, model = saved(tmp_path)
    raw = json.loads((directory / "config.json").read_text())
    assert raw[CONFIG_FORMAT_KEY] == CONFIG_FORMAT == FAVOR_FORMAT
    assert from_pretrained(directory).config == model.config
    assert json.loads(model.config.to_json())[CONFIG_FORMAT_KEY] == CONFIG_FORMAT


@pytest.mark.parametrize(
    "field",
    ["activation", "d_ff", "layer_norm_eps", "position", "tie_embeddings", "attention", "favor"],
)
def test_a_missing_model_field_is_an_error_naming_it(tmp_path, field):
    directory, _ = saved(tmp_path)
    edit_config(directory, lambda raw: raw.pop(field))
    with pytest.raises(ModelLoadError, match=rf"config\.json: missing field '{field}'"):
        from_pretrained(directory)


@pytest.mark.parametrize(
    "field", ["kernel", "num_features", "projection", "seed", "chunk_size", "block_size", "backend"]
)
def test_a_missing_favor_field_is_an_error_naming_it(tmp_path, field):
    directory, _ = saved(tmp_path)
    edit_config(directory, lambda raw: raw["favor"].pop(field))
    with pytest.raises(ModelLoadError, match=rf"config\.json: missing field 'favor\.{field}'"):
        from_pretrained(directory)


def test_format_2_files_written_before_the_number_existed_still_load(tmp_path):
    """Nested ``favor`` without ``config_format`` (format 2); ``backend`` was added during it."""
    directory, model = saved(tmp_path)
    ids = torch.randint(0, 23, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids).logits

    def as_format_2(raw):
        del raw[CONFIG_FORMAT_KEY]
        del raw["favor"]["backend"]

    edit_config(directory, as_format_2)
    loaded = from_pretrained(directory)
    assert loaded.config == model.config and loaded.config.favor.backend == ADDED_FIELDS[2]["backend"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    # Anything else format 2 always wrote is still required.
    edit_config(directory, lambda raw: raw["favor"].pop("block_size"))
    with pytest.raises(ModelLoadError, match=r"missing field 'favor\.block_size' \(configuration format 2\)"):
        from_pretrained(directory)


def test_an_unknown_format_is_refused(tmp_path):
    directory, _ = saved(tmp_path)
    edit_config(directory, lambda raw: raw.update({CONFIG_FORMAT_KEY: 99}))
    with pytest.raises(ModelLoadError, match=r"unknown config_format 99.*newer version"):
        from_pretrained(directory)
    edit_config(directory, lambda raw: raw.update({CONFIG_FORMAT_KEY: True}))
    with pytest.raises(ModelLoadError, match="unknown config_format True"):
        from_pretrained(directory)


@pytest.mark.parametrize("name", PERFORMER_FIXTURES)
def test_legacy_fixtures_get_the_values_of_their_format(name):
    """Format 1 had no block_size and no backend: they load as what 0.1.0 ran (the outputs are
    compared bit for bit in test_io.test_models_saved_by_performers_0_1_0_still_load)."""
    raw = json.loads((LEGACY / name / "config.json").read_text())
    assert CONFIG_FORMAT_KEY not in raw and "kernel" in raw
    favor = from_pretrained(LEGACY / name).config.favor
    assert (favor.block_size, favor.backend) == (ADDED_FIELDS[1]["block_size"], ADDED_FIELDS[1]["backend"])
    assert (favor.block_size, favor.backend) == (None, "auto")


@pytest.mark.parametrize("field", ["activation", "kernel", "projection_kind", "seed", "layer_norm_eps"])
def test_a_legacy_file_missing_a_field_of_its_format_is_refused(tmp_path, field):
    directory = copy_fixture("performer_mlm_softmax_sqrtd", tmp_path)
    edit_config(directory, lambda raw: raw.pop(field))
    name = {"projection_kind": "projection"}.get(field, field)  # reported under today's name
    with pytest.raises(ModelLoadError, match=rf"missing field '{name}' \(configuration format 1\)"):
        from_pretrained(directory)


def test_saved_again_a_legacy_model_is_written_in_todays_format(tmp_path):
    model = from_pretrained(LEGACY / "performer_causal_favorpp")
    model.save_pretrained(tmp_path / "again")
    raw = json.loads((tmp_path / "again" / "config.json").read_text())
    assert raw[CONFIG_FORMAT_KEY] == CONFIG_FORMAT and "kernel" not in raw and "backend" in raw["favor"]
    assert from_pretrained(tmp_path / "again").config == model.config


def test_config_save_load_and_from_json_are_strict_but_from_dict_builds_in_code(tmp_path):
    config = tiny()
    config.save(tmp_path / "c.json")
    assert PerformerConfig.load(tmp_path / "c.json") == config
    data = json.loads(config.to_json())
    del data["activation"]
    with pytest.raises(ConfigError, match="missing field 'activation'"):
        PerformerConfig.from_json(json.dumps(data))
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"c\.json: missing field 'activation'"):
        PerformerConfig.load(tmp_path / "c.json")
    (tmp_path / "c.json").write_bytes(b'{"d_model": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"c\.json: not UTF-8"):
        PerformerConfig.load(tmp_path / "c.json")
    # from_dict is the constructor for configs written in code: defaults fill what is absent.
    assert PerformerConfig.from_dict({"d_model": 64}).activation == "gelu"


def test_favor_config_from_saved_names_the_field_and_reads_each_format():
    complete = FavorConfig(8, "relu").to_dict()
    assert favor_config_from_saved(complete, format=FAVOR_FORMAT) == FavorConfig(8, "relu")
    partial = {k: v for k, v in complete.items() if k != "kernel"}
    with pytest.raises(ConfigError, match=r"missing field 'favor\.kernel'"):
        favor_config_from_saved(partial, format=FAVOR_FORMAT, prefix="favor.")
    flat = {
        "num_features": 0,
        "kernel": "elu",
        "projection_kind": "orthogonal",
        "row_norms": "chi",
        "redraw_every": None,
        "seed": 2,
        "chunk_size": 16,
    }
    assert favor_config_from_saved(flat) == FavorConfig(None, "elu", redraw_every=0, seed=2, chunk_size=16)
    with pytest.raises(ValueError, match="unknown FavorConfig field 'features'"):
        favor_config_from_saved({**complete, "features": 3}, format=FAVOR_FORMAT)


def test_config_overrides_still_apply_after_a_strict_load(tmp_path):
    directory, _ = saved(tmp_path, PerformerForMaskedLM)
    exact = from_pretrained(directory, attention="exact")
    assert exact.config.attention == "exact" and exact.config.activation == "relu"


# ---------------------------------------------------------------------------------------------
# Hugging Face models converted by performerize / performers convert

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
from tests.integrations.test_transformers import _bert  # noqa: E402  (a tiny BERT, after the skip)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def test_a_converted_model_reloads_as_favor_without_being_told(tmp_path):
    from transformers import AutoModel

    from performers.integrations import transformers as hf

    model = hf.performerize(_bert(), FavorConfig(8, seed=3))
    ids = torch.randint(1, 30, (2, 9), generator=torch.Generator().manual_seed(0))
    expected = _hidden(model, ids)
    model.save_pretrained(tmp_path / "favor")
    raw = json.loads((tmp_path / "favor" / "config.json").read_text())
    assert raw["attn_implementation"] == "favor" and raw["favor_config_format"] == FAVOR_FORMAT
    loaded = AutoModel.from_pretrained(tmp_path / "favor").eval()  # no attn_implementation given
    assert hf.is_performerized(loaded)
    assert torch.equal(_hidden(loaded, ids), expected)
    # Saved again after running, it still reloads as FAVOR+.
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["attn_implementation"] == "favor"
    # An explicit other implementation is the caller's choice: softmax, same weights.
    softmax = AutoModel.from_pretrained(tmp_path / "favor", attn_implementation="sdpa").eval()
    assert not hf.is_performerized(softmax)
    # unperformerize drops the marker with the rest of the FAVOR settings.
    hf.unperformerize(loaded)
    loaded.save_pretrained(tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "attn_implementation" not in plain and "favor_config" not in plain


def test_without_performers_imported_a_converted_model_refuses_to_load(tmp_path):
    from performers.integrations import transformers as hf

    hf.performerize(_bert(), FavorConfig(8)).save_pretrained(tmp_path / "favor")
    code = "import sys; from transformers import AutoModel; AutoModel.from_pretrained(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "favor")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode != 0 and "favor" in result.stderr  # refused, never a silent softmax


def test_load_hf_model_runs_favor_for_a_directory_converted_before_the_marker(tmp_path):
    from transformers import AutoModel

    from performers.integrations import transformers as hf

    directory = LEGACY / "hf_bert_favor"
    assert "attn_implementation" not in json.loads((directory / "config.json").read_text())
    model, _ = hf.load_hf_model(directory)
    assert hf.is_performerized(model)
    told = AutoModel.from_pretrained(directory, attn_implementation="favor").eval()
    expected, _ = load_safetensors(directory / "expected.safetensors")
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
        assert torch.equal(hidden, told(**inputs).last_hidden_state)  # the saved projections
    # (bit for bit against 0.1.0's outputs: test_hf_transformers.test_a_bert_converted_by_...)
    torch.testing.assert_close(hidden, expected["last_hidden_state"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field", ["kernel", "num_features", "projection_kind"])
def test_a_converted_model_missing_a_favor_field_is_refused(tmp_path, field):
    from transformers import AutoModel

    from performers.integrations import transformers as hf

    directory = copy_fixture("hf_bert_favor", tmp_path)
    edit_config(directory, lambda raw: raw["favor_config"].pop(field))
    name = {"projection_kind": "projection"}.get(field, field)
    with pytest.raises(ConfigError, match=rf"missing field 'favor_config\.{name}'"):
        hf.load_hf_model(directory)
    model = AutoModel.from_pretrained(directory, attn_implementation="favor")
    with pytest.raises(ConfigError, match=rf"favor_config\.{name}"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long))
    # Today's format requires every field, backend included.
    current = tmp_path / "current"
    hf.performerize(_bert(), FavorConfig(8)).save_pretrained(current)
    edit_config(current, lambda raw: raw["favor_config"].pop("backend"))
    with pytest.raises(
        ConfigError, match=rf"missing field 'favor_config\.backend' \(configuration format {FAVOR_FORMAT}\)"
    ):
        hf.load_hf_model(current)
