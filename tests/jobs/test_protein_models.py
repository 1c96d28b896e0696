"""load_protein_model (performers.jobs.protein_models): one loader for this package's protein
models and the Hugging Face ones (ESM converted or not, ProtBert-style, ProtGPT2-style).

Every directory is a tiny random model saved here; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForCausalLM, PerformerForMaskedLM
from performers.jobs.protein_models import NotAProteinModelError, ProteinModel, load_protein_model
from performers.models.io import ModelLoadError
from performers.proteins import ProteinTokenizer
from performers.utils import InputError

pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    EsmConfig,
    EsmForMaskedLM,
    EsmModel,
    EsmTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    OPTConfig,
    OPTModel,
)

from performers.integrations import transformers as hf

ESM_VOCAB = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>".split()
)
LETTERS = list("LAGVESIKRDTPNQFYMHCWXUBZO")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _performer(directory: Path, cls=PerformerForMaskedLM) -> Path:
    tokenizer = ProteinTokenizer()
    torch.manual_seed(0)
    config = PerformerConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=16,
        num_layers=1,
        num_heads=2,
        d_ff=32,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_id,
        favor=FavorConfig(8, chunk_size=8),
    )
    cls(config).save_pretrained(directory)
    tokenizer.save(directory / "tokenizer.json")
    return directory


def _esm(directory: Path, cls=EsmForMaskedLM, convert: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    tokenizer = EsmTokenizer(str(directory / "vocab.txt"))
    config = EsmConfig(
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        position_embedding_type="rotary",
        pad_token_id=1,
        mask_token_id=32,
        token_dropout=True,
    )
    torch.manual_seed(0)
    model = cls(config).eval()
    if convert:
        hf.performerize(model, FavorConfig(16))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _protbert(directory: Path, vocabulary: list[str] = LETTERS) -> Path:
    """A ProtBert-style model: BERT over single-letter residue tokens, words = residues."""
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (directory / "vocab.txt").write_text("\n".join(specials + vocabulary) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), do_lower_case=False)
    config = BertConfig(
        vocab_size=len(specials) + len(vocabulary),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _protgpt2(directory: Path) -> Path:
    """A ProtGPT2-style model: GPT-2 with a (here tiny) byte-level BPE on the raw sequence."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", *LETTERS, "MK"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\nM K\n")
    tokenizer = GPT2Tokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    config = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _runs(loaded: ProteinModel, sequences=("MKTAYIAK", "MKV")) -> torch.Tensor:
    ids, mask = loaded.encode(sequences)
    assert ids.shape == mask.shape and ids.dtype == torch.long
    assert mask.sum(-1).tolist()[0] > mask.sum(-1).tolist()[1]  # right-padded, lengths kept
    with torch.no_grad():
        out = loaded.model(ids, attention_mask=mask)
    logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert torch.isfinite(logits).all()
    return ids


@pytest.mark.parametrize(
    ("cls", "kind"), [(PerformerForMaskedLM, "masked_lm"), (PerformerForCausalLM, "causal_lm")]
)
def test_a_performers_model(cls, kind, tmp_path):
    loaded = load_protein_model(_performer(tmp_path, cls))
    assert (loaded.kind, loaded.source, loaded.family) == (kind, "performers", "performer")
    assert isinstance(loaded.model, cls) and not loaded.model.training
    assert isinstance(loaded.tokenizer, ProteinTokenizer)
    ids = _runs(loaded)
    assert ids[1, :5].tolist() == ProteinTokenizer().encode("MKV")


def test_a_performers_run_directory_loads_its_final_model(tmp_path):
    _performer(tmp_path / "final")
    loaded = load_protein_model(tmp_path)
    assert loaded.path == tmp_path / "final" and loaded.kind == "masked_lm"


@pytest.mark.parametrize("convert", [False, True])
def test_an_esm_masked_lm_converted_or_not(convert, tmp_path):
    loaded = load_protein_model(_esm(tmp_path, convert=convert))
    assert (loaded.kind, loaded.source, loaded.family) == ("masked_lm", "huggingface", "esm")
    assert type(loaded.model).__name__ == "EsmForMaskedLM" and not loaded.model.training
    assert hf.is_performerized(loaded.model) is convert  # converted: FAVOR+ with its projections
    assert loaded.residue_separator == ""
    assert repr(loaded).startswith("ProteinModel(kind='masked_lm', source='huggingface', family='esm'")
    ids = _runs(loaded)
    # <cls> M K V <eos> <pad>...: ESM's own convention.
    assert ids[1].tolist() == [0, 20, 15, 7, 2, *[1] * 5]
    assert torch.equal(loaded.encode(["mkv"])[0][0], ids[1, :5])  # any case


def test_an_esm_encoder(tmp_path):
    loaded = load_protein_model(_esm(tmp_path, cls=EsmModel))
    assert loaded.kind == "encoder" and loaded.family == "esm"
    _runs(loaded)


def test_a_protbert_style_model_gets_space_separated_residues(tmp_path):
    loaded = load_protein_model(_protbert(tmp_path))
    assert (loaded.kind, loaded.family, loaded.residue_separator) == ("masked_lm", "bert", " ")
    ids = _runs(loaded)
    vocab = loaded.tokenizer.get_vocab()
    assert ids[1, :5].tolist() == [vocab["[CLS]"], vocab["M"], vocab["K"], vocab["V"], vocab["[SEP]"]]


def test_a_protgpt2_style_causal_model(tmp_path):
    loaded = load_protein_model(_protgpt2(tmp_path))
    assert (loaded.kind, loaded.family, loaded.residue_separator) == ("causal_lm", "gpt2", "")
    ids = _runs(loaded)
    vocab = loaded.tokenizer.get_vocab()
    assert ids[1, :2].tolist() == [vocab["MK"], vocab["V"]]  # BPE on the raw sequence
    assert loaded.tokenizer.pad_token_id is None  # padded with <|endoftext|>, masked out
    assert ids[1, 2:].tolist() == [vocab["<|endoftext|>"]] * (ids.shape[1] - 2)


def _refused(path) -> str:
    with pytest.raises(NotAProteinModelError) as caught:
        load_protein_model(path)
    assert isinstance(caught.value, ModelLoadError) and isinstance(caught.value, InputError)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_a_directory_that_is_neither_is_refused_naming_it(tmp_path):
    assert "no config.json" in _refused(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 4}')
    assert "neither a performers model class" in _refused(tmp_path)


def test_an_unsupported_hugging_face_family_is_refused(tmp_path):
    config = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
    )
    OPTModel(config).save_pretrained(tmp_path)
    assert "'opt'" in _refused(tmp_path)


def test_a_hugging_face_model_without_a_protein_tokenizer_is_refused(tmp_path):
    assert "unknown token" in _refused(_protbert(tmp_path / "words", ["the", "cat", "sat"]))
    esm = _esm(tmp_path / "untokenized")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (esm / name).unlink(missing_ok=True)
    assert "without a tokenizer" in _refused(esm)


def test_a_performers_model_without_its_protein_tokenizer_is_refused(tmp_path):
    _performer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert "tokenizer.json" in _refused(tmp_path)


def test_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_protein_model(tmp_path / "absent")
