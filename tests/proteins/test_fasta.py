import gzip
import io
from pathlib import Path

import pytest

from performers.proteins import FastaError, ProteinTokenizer, read_fasta

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "proteins"


def write(tmp_path, text: str, name="x.fasta", gz=False) -> Path:
    path = tmp_path / name
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_reads_records_plain_and_gzip(tmp_path, gz):
    path = write(tmp_path, ">p1 SET=train VALIDATION=False\nmkv\nLLa*\n\n>p2 desc\nACDE\n", gz=gz)
    records = list(read_fasta(path))
    assert [r.id for r in records] == ["p1", "p2"]
    assert records[0].sequence == "MKVLLA"  # upper-cased, lines joined, terminal '*' removed
    assert records[0].fields == {"SET": "train", "VALIDATION": "False"}
    assert len(records[1]) == 4


def test_streams_from_open_text_and_binary():
    text = ">a\nMK\n>b\nVV\n"
    assert [r.sequence for r in read_fasta(io.StringIO(text))] == ["MK", "VV"]
    assert [r.sequence for r in read_fasta(io.BytesIO(text.encode()))] == ["MK", "VV"]


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("MKV\n>a\nMK\n", 1, "sequence data before the first '>' header"),
        (">a\nMK\n>b\n>c\nVV\n", 3, "record 'b' has no sequence"),
        (">a\nMK\n>\nVV\n", 3, "empty header"),
        (">a\nMK\nMJ1\n", 3, "illegal character 'J' in record 'a' (column 2)"),
        (">a\nMK-V\n", 2, "illegal character '-'"),
        (">a\nM*KV\n", 2, "a stop '*' inside the sequence"),
        (">a\nMK\n>b\n", 3, "record 'b' has no sequence"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(FastaError) as error:
        list(read_fasta(path))
    assert str(error.value).startswith(f"{path}:{line}:")
    assert message in str(error.value)


def test_rare_residues_keep_map_reject(tmp_path):
    path = write(tmp_path, ">a\nMUOBZX\n")
    assert next(read_fasta(path)).sequence == "MUOBZX"
    assert next(read_fasta(path, rare="map")).sequence == "MCKXXX"
    for kwargs in ({"rare": "reject"}, {"strict": True}):
        with pytest.raises(FastaError, match=r":2: rare residue 'U' in record 'a' \(column 2\) rejected"):
            list(read_fasta(path, **kwargs))
    with pytest.raises(ValueError, match="rare must be"):
        list(read_fasta(path, rare="drop"))


def test_tokenizer_round_trip_and_ids():
    tok = ProteinTokenizer()
    assert len(tok) == 30 and tok.pad_id == 0 and tok.mask_id == 1 and tok.cls_id == tok.bos_id == 2
    ids = tok.encode("mkvXU")
    assert ids[0] == tok.cls_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "MKVXU"
    assert tok.decode(ids, skip_special_tokens=False) == "<cls>MKVXU<eos>"
    assert tok.encode("MJ", add_special_tokens=False)[1] == tok.unk_id
    with pytest.raises(ValueError, match="unknown residue 'J' at position 1"):
        ProteinTokenizer(unknown="error").encode("MJ")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
    assert set(tok.residue_ids).isdisjoint(tok.special_ids)


def test_tokenizer_batch_padding_and_save_load(tmp_path):
    tok = ProteinTokenizer()
    ids, mask = tok.batch_encode(["MK", "MKVL"])
    assert ids.shape == (2, 6) and mask.tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert ids[0, 4:].tolist() == [tok.pad_id] * 2
    left, left_mask = tok.batch_encode(["MK", "MKVL"], padding_side="left")
    assert left_mask[0].tolist() == [0, 0, 1, 1, 1, 1] and left[0, 2] == tok.cls_id
    cut, _ = tok.batch_encode(["MKVLLL"], max_length=3)
    assert cut.shape == (1, 3)
    tok.save(tmp_path / "tokenizer.json")
    assert ProteinTokenizer.load(tmp_path / "tokenizer.json") == tok
    (tmp_path / "bad.json").write_text('{"type": "Other"}')
    with pytest.raises(ValueError, match="not a ProteinTokenizer file"):
        ProteinTokenizer.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        ProteinTokenizer.load(tmp_path / "broken.json")


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not beside this checkout")
def test_reads_the_real_secondary_structure_file_and_every_residue_tokenizes():
    tok = ProteinTokenizer(unknown="error")
    records = list(read_fasta(SHARED / "flip_secondary_structure" / "sequences.fasta.gz"))
    assert len(records) == 11156  # the count stated in SOURCE.md
    assert sum(len(r) for r in records) == 2845094
    for record in records[:500]:
        assert tok.decode(tok.encode(record.sequence)) == record.sequence
