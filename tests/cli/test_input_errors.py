"""Input the commands and readers cannot honour gets a clear error (issue 16, item 6): a typed
exception from the API naming the argument, file or field, and one line from the command line
(``performers CMD: error: ...``, exit status 2) instead of a traceback or a silent guess."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM
from performers.cli import build_parser, main
from performers.cli.common import UsageError
from performers.cli.config_file import config_defaults
from performers.proteins import (
    FastaError,
    ProteinTokenizer,
    ResidueLabels,
    UnknownResidueError,
    fasta_stream,
    read_fasta,
)

TOK = ProteinTokenizer()


def _model_dir(tmp_path: Path, cls=PerformerForCausalLM, max_length: int = 32) -> Path:
    """A save_pretrained directory with tokenizer.json, as training writes its final/."""
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=TOK.vocab_size,
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=max_length,
        dropout=0.0,
        pad_token_id=TOK.pad_id,
        favor=FavorConfig(8, chunk_size=8),
    )
    directory = tmp_path / "model"
    cls(config).save_pretrained(directory)
    TOK.save(directory / "tokenizer.json")
    return directory


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"performers {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# performers generate: invalid residues


def test_the_tokenizer_names_an_unknown_residue_and_its_position():
    with pytest.raises(
        UnknownResidueError, match=r"unknown residue '1' at position 2 of the sequence 'MK1V'"
    ) as info:
        TOK.encode("MK1V", unknown="error")
    assert (info.value.char, info.value.position, info.value.sequence) == ("1", 2, "MK1V")
    assert TOK.encode("MK1V", add_special_tokens=False)[2] == TOK.unk_id  # the tokenizer's own policy
    with pytest.raises(UnknownResidueError):
        TOK.batch_encode(["MKV", "MJ"], unknown="error")


def test_generate_refuses_a_prompt_with_an_invalid_residue(tmp_path, capsys):
    directory = _model_dir(tmp_path)
    assert main(["generate", str(directory), "MKV", "MK1V", "--max-new-tokens", "2"]) == 2
    line = _one_line_error(capsys, "generate")
    assert "prompt 2 'MK1V': '1' at position 3 is not a residue of this model" in line
    assert "--allow-unknown" in line


def test_generate_accepts_unknown_residues_when_told(tmp_path, capsys):
    directory = _model_dir(tmp_path)
    assert main(["generate", str(directory), "MK1V", "--max-new-tokens", "2", "--allow-unknown"]) == 0
    assert capsys.readouterr().out.startswith("MKV")  # <unk> is not printed


# ---------------------------------------------------------------------------------------------
# performers evaluate: the model's own maximum length


def test_evaluate_uses_the_models_maximum_length_by_default(tmp_path, capsys):
    directory = _model_dir(tmp_path, PerformerForMaskedLM, max_length=24)  # shorter than 256
    assert main(["evaluate", str(directory), "--limit", "4", "--batch-size", "4"]) == 0
    assert "test: accuracy" in capsys.readouterr().out


def test_evaluate_refuses_a_max_length_beyond_the_learned_positions(tmp_path, capsys):
    directory = _model_dir(tmp_path, PerformerForMaskedLM, max_length=24)
    assert main(["evaluate", str(directory), "--limit", "4", "--max-length", "64"]) == 2
    line = _one_line_error(capsys, "evaluate")
    assert "--max-length: max_length 64 exceeds the model's maximum length 24" in line


# ---------------------------------------------------------------------------------------------
# --config: typed values


def _command_parser(*argv: str):
    return build_parser().parse_args(list(argv)).command_parser


@pytest.mark.parametrize(
    "values,pattern",
    [
        ({"resume": "no"}, r"resume: expected true or false \(a JSON boolean\), got \"no\""),
        ({"bf16": "false"}, r"bf16: expected true or false"),
        ({"bf16": 0}, r"bf16: expected true or false"),
        ({"steps": True}, r"steps: expected an integer, got true"),
        ({"steps": "5"}, r"steps: expected an integer, got \"5\""),
        ({"steps": 2.0}, r"steps: expected an integer, got 2.0"),
        ({"steps": None}, r"steps: expected an integer, got null"),
        ({"lr": "1e-3"}, r"lr: expected a number"),
        ({"lr": False}, r"lr: expected a number"),
        ({"task": "mlmx"}, r"task: expected one of \"mlm\", \"clm\""),
        ({"task": 1}, r"task: expected one of"),
        ({"num_features": -1}, r"num_features: must be >= 0"),
        ({"num_features": True}, r"num_features: expected"),
        ({"func": "x"}, r"unknown option\(s\) func"),
        ({"command": "train"}, r"unknown option\(s\) command"),
        ({"run": None, "command_parser": None}, r"unknown option\(s\) command_parser, run"),
        ({"config": "other.json"}, r"unknown option\(s\) config"),
        ({"stepz": 2}, r"unknown option\(s\) stepz"),
        ({"steps": 2, "max-length": 3, "max_length": 4}, r"max_length: option 'max_length' is given twice"),
    ],
)
def test_config_values_are_checked_against_their_option(values, pattern):
    with pytest.raises(UsageError, match=pattern):
        config_defaults(_command_parser("train"), values)


def test_config_values_of_the_right_type_are_taken():
    parser = _command_parser("train")
    values = {
        "resume": False,
        "bf16": True,
        "steps": 3,
        "lr": 1,
        "task": "clm",
        "max-length": 64,
        "num_features": 0,
    }
    defaults = config_defaults(parser, values)
    assert defaults == {
        "resume": False,
        "bf16": True,
        "steps": 3,
        "lr": 1.0,
        "task": "clm",
        "max_length": 64,
        "num_features": None,  # the command line's "0 means none"
    }
    assert isinstance(defaults["lr"], float)
    # null where the option's default is "not set"; lists for options taking several values.
    assert config_defaults(_command_parser("evaluate", "m"), {"attention": None, "limit": None}) == {
        "attention": None,
        "limit": None,
    }
    generate = _command_parser("generate", "m", "MKV")
    with pytest.raises(UsageError, match=r"prompts: a positional argument; give it on the command line"):
        config_defaults(generate, {"prompts": ["MKV"]})
    assert config_defaults(generate, {"allow_unknown": True}) == {"allow_unknown": True}


def test_a_bad_config_value_is_one_line_from_the_command_line(tmp_path, cli_error):
    config = tmp_path / "run.json"
    for values, expected in (
        ({"resume": "no"}, "resume: expected true or false"),
        ({"steps": True}, "steps: expected an integer, got true"),
        ({"func": "main"}, "unknown option(s) func"),
    ):
        config.write_text(json.dumps(values))
        line = cli_error(["train", "--config", str(config)])
        assert line.startswith(f"performers train: error: --config {config}: {expected}"), line
    config.write_bytes(b'{"steps": "caf\xe9"}')
    assert "cannot read a JSON object" in cli_error(["train", "--config", str(config)])


# ---------------------------------------------------------------------------------------------
# FASTA: gzip, encoding, byte-order mark

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("block", [1, 2, 3, 1 << 20])
def test_a_utf8_bom_is_dropped(tmp_path, monkeypatch, block):
    monkeypatch.setattr(fasta_stream, "BLOCK_BYTES", block)
    monkeypatch.setattr(fasta_stream, "_RAW_BYTES", block)
    text = BOM + b">a x=1\nMKV\n>b\nAC\n"
    plain, packed = tmp_path / "x.fasta", tmp_path / "x.fasta.gz"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))
    expected = [("a x=1", "MKV"), ("b", "AC")]
    for source in (plain, packed, io.BytesIO(text), io.TextIOWrapper(io.BytesIO(text), encoding="utf-8")):
        assert [(r.header, r.sequence) for r in read_fasta(source)] == expected


def test_labelled_fasta_with_a_bom_is_read(tmp_path):
    sequences = tmp_path / "s.fasta"
    labels = tmp_path / "l.fasta"
    sequences.write_bytes(BOM + b">p1\nMKVA\n")
    labels.write_bytes(BOM + b">p1 SET=train VALIDATION=False\nHECH\n")
    data = ResidueLabels.load(sequences, labels, split="train")
    assert data.ids == ["p1"] and data.labels == ["HECH"]


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_bytes(">a\nMKV\n".encode("utf-16"))
    with pytest.raises(FastaError, match=r"x\.fasta: UTF-16 text"):
        list(read_fasta(path))


def test_a_truncated_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "x.fasta.gz"
    path.write_bytes(gzip.compress(b">a\nMKV\n>b\nACDE\n" * 2000)[:-40])
    with pytest.raises(FastaError, match=r"x\.fasta\.gz: truncated gzip file"):
        list(read_fasta(path))
    for mode in ("rt", "rb"):  # a stream that decompresses itself
        with (
            gzip.open(path, mode) as handle,
            pytest.raises(FastaError, match=r"x\.fasta\.gz: truncated compressed"),
        ):
            list(read_fasta(handle))


def test_a_text_stream_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.fasta"
    path.write_bytes(">a caf\xe9\nMKV\n".encode("latin-1"))
    with (
        open(path, encoding="utf-8") as handle,
        pytest.raises(FastaError, match=r"latin1\.fasta: not utf-8 text"),
    ):
        list(read_fasta(handle))
    # From the path the byte is reported where it is (a header keeps it as U+FFFD).
    path.write_bytes(b">a\nMK\xe9V\n")
    with pytest.raises(FastaError, match=r"latin1\.fasta:2: a non-ASCII character .* \(column 3\)"):
        list(read_fasta(path))


def test_a_tokenizer_file_that_is_not_utf8_or_not_an_object_names_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b'{"type": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a valid tokenizer file"):
        ProteinTokenizer.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a ProteinTokenizer file"):
        ProteinTokenizer.load(path)


def test_evaluate_on_a_truncated_gzip_fasta_is_one_line(tmp_path, cli_error):
    directory = _model_dir(tmp_path, PerformerForMaskedLM)
    data = tmp_path / "x.fasta.gz"
    data.write_bytes(gzip.compress(b">a\nMKV\n" * 2000)[:-40])
    cli_error(["evaluate", str(directory), "--data", str(data)], match=r"x\.fasta\.gz: truncated gzip file")


# ---------------------------------------------------------------------------------------------
# The command line: one line for user errors, tracebacks for bugs


def test_a_missing_model_directory_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "no such config file" in _one_line_error(capsys, "evaluate")


def test_a_model_directory_missing_a_config_field_is_one_line(tmp_path, capsys):
    directory = _model_dir(tmp_path)
    raw = json.loads((directory / "config.json").read_text())
    del raw["activation"]
    (directory / "config.json").write_text(json.dumps(raw))
    assert main(["generate", str(directory), "MKV"]) == 2
    assert "config.json: missing field 'activation'" in _one_line_error(capsys, "generate")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", str(tmp_path / "nowhere")])
    monkeypatch.setenv("PERFORMERS_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["evaluate", str(tmp_path / "nowhere")])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from performers.cli import evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(evaluate, "load_trained", broken)
    # A performers model's config (evaluate reads it to choose the loader before loading).
    (tmp_path / "config.json").write_text('{"architectures": ["PerformerForMaskedLM"]}')
    with pytest.raises(RuntimeError, match="a bug"):
        main(["evaluate", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# A reused FavorCache (Hugging Face models)


def _llama():
    pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig, LlamaForCausalLM

    from performers.integrations import transformers as hf

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return hf.performerize(LlamaForCausalLM(config), FavorConfig(16)), hf


def test_a_favor_cache_reused_for_another_batch_or_prompt_is_a_clear_error():
    model, hf = _llama()
    cache = hf.FavorCache()
    prompt = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    options = {"max_new_tokens": 3, "do_sample": False, "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    first = model.generate(prompt, cache=cache, **options)
    assert cache.get_seq_length() == 7
    other = torch.randint(1, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    with pytest.raises(
        ValueError, match=r"FavorCache: it holds the state of 2 sequence\(s\) \(7 tokens seen\)"
    ):
        model.generate(
            other, cache=cache, **(options | {"attention_mask": torch.ones(3, 5, dtype=torch.long)})
        )
    # A new prompt no longer than what the cache has seen leaves nothing to add: it used to fail
    # with a reshape error inside the attention module.
    short = prompt[:, :3]
    with pytest.raises(ValueError, match=r"FavorCache: no new position to add \(the cache has seen 7 tokens"):
        model.generate(short, cache=cache, **(options | {"attention_mask": torch.ones_like(short)}))
    # A padded new prompt whose mask cannot cover the cached positions: used to run silently
    # with the new tokens masked out.
    padded = torch.ones_like(prompt)
    padded[0, 0] = 0
    with pytest.raises(ValueError, match=r"attention_mask covers 5 positions, but the cache has seen 7"):
        model.generate(prompt, cache=cache, **(options | {"attention_mask": padded}))
    cache.reset()  # then it serves a new generation, equal to a fresh cache's
    assert torch.equal(model.generate(prompt, cache=cache, **options), first)


def test_a_failed_call_leaves_the_favor_cache_usable(monkeypatch):
    model, hf = _llama()
    cache = hf.FavorCache()
    prompt = torch.randint(1, 64, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(prompt, cache=cache, use_cache=True)
    seen = cache.get_seq_length()
    real = hf.favor_attention
    monkeypatch.setattr(hf, "favor_attention", lambda *a, **k: (_ for _ in ()).throw(MemoryError("boom")))
    with pytest.raises(MemoryError), torch.no_grad():
        model(prompt[:, :1], cache=cache, use_cache=True)
    monkeypatch.setattr(hf, "favor_attention", real)
    with torch.no_grad():  # not "updated twice": the failed call left no pending keys
        model(prompt[:, :1], cache=cache, use_cache=True)
    assert cache.layers[-1].seen == seen + 1


def test_distill_texts_name_the_file_for_bad_encoding_truncated_gzip_and_drop_a_bom(tmp_path):
    from performers.integrations.distill import read_texts

    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt: not UTF-8 text"):
        read_texts(latin)
    whole = gzip.compress(b"one sentence\nanother sentence\n" * 200)
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.txt\.gz: truncated or corrupt gzip file"):
        read_texts(cut)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbffirst\nsecond\n")
    assert read_texts(bom) == ["first", "second"]
