"""The fast FASTA reader: the same records and errors as the reference (line-by-line) parser on
randomly broken inputs cut into tiny blocks, and the file-level failures (binary data, truncated or
corrupt gzip, other compressions) named clearly."""

import gzip
import io
import random

import pytest

from performers.proteins import fasta_stream
from performers.proteins.fasta import FastaError, read_fasta, read_fasta_batches

# Lines that exercise every rule: headers (tagged, empty, indented), case, rare residues, stops
# (ending a line or not), comments, blank lines, CR/CRLF, illegal and non-ASCII characters.
PIECES = [
    ">a x=1\n", ">b\n", "> \n", ">\n", " >c\n", "MKV\n", "mkvl\n", "AC DE\n", "UOBZX\n", "M*\n", "M*K\n",
    "**\n", "*\n", "\n", "  \n", ";comment\n", "J\n", "M-K\n", "\r\n", "\r", "MK\r\n", "\xe9\n", ">d \xe9\n",
    "M K *\n", "HEC\n", "hec\n", "M\t\x0bK\n", "\x1cMK\n", "MKV",
]  # fmt: skip
OPTIONS = [{}, {"rare": "map"}, {"rare": "reject"}, {"alphabet": "HEC"}]


def outcome(source, **options):
    """Records, or the error message without the file name."""
    try:
        return [(r.header, r.sequence) for r in read_fasta(source, **options)]
    except FastaError as error:
        return str(error).split(":", 1)[1]


def test_fast_path_equals_the_reference_parser_on_random_inputs(tmp_path, monkeypatch):
    rng = random.Random(0)
    path = tmp_path / "x.fasta"
    for _ in range(400):
        # Tiny blocks put record boundaries, CRLFs and gzip members across block edges.
        monkeypatch.setattr(fasta_stream, "BLOCK_BYTES", rng.choice([1, 2, 3, 7, 64, 1 << 20]))
        monkeypatch.setattr(fasta_stream, "_RAW_BYTES", rng.choice([1, 3, 5, 1 << 20]))
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5:
            text = ">z\n" + text
        data = text.encode("utf-8")
        if rng.random() < 0.3:
            path.write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
        options = rng.choice(OPTIONS)
        reference = outcome(io.TextIOWrapper(io.BytesIO(data), encoding="ascii", errors="replace"), **options)
        assert outcome(path, **options) == reference, (text, options)


def test_skipping_bad_records_keeps_the_good_ones_and_reports_each(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text(">a\nMK\n>b\nMJK\nVV\n>\nMK\n>c\n>d\nM*K\n>e\nWW*\n>f\nmu\n")
    errors = []
    batches = list(read_fasta_batches(path, rare="reject", on_invalid=errors.append))
    records = [(r.header, r.line, r.sequence) for batch in batches for r in batch]
    assert records == [("a", 1, b"MK"), ("e", 11, b"WW")]
    assert [str(e).split(":", 2)[1] for e in errors] == ["4", "6", "8", "10", "14"]
    assert "illegal character 'J' in record 'b' (column 2)" in str(errors[0])
    assert "rare residue 'U' in record 'f' (column 2)" in str(errors[-1])
    # Without on_invalid the first one raises.
    with pytest.raises(FastaError, match=r":4: illegal character 'J'"):
        list(read_fasta_batches(path))


def test_raw_bytes_are_reported_and_multi_member_gzip_is_read(tmp_path):
    path = tmp_path / "x.fasta.gz"
    raw = gzip.compress(b">a\nMK\n") + gzip.compress(b">b\nVV\n") + b"\x00\x00"  # members + zero padding
    path.write_bytes(raw)
    seen = []
    records = [r for batch in read_fasta_batches(path, on_raw=seen.append) for r in batch]
    assert [(r.header, r.sequence) for r in records] == [("a", b"MK"), ("b", b"VV")]
    assert b"".join(seen) == raw


def test_crlf_and_lone_cr_line_numbers(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_bytes(b">a\r\nMK\r\n>b\rVJ\r")
    with pytest.raises(FastaError, match=r"x.fasta:4: illegal character 'J' in record 'b' \(column 2\)"):
        list(read_fasta(path))


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
    whole = gzip.compress(b"".join(b">p%d\nMKVLA\n" % i for i in range(2000)))
    path = tmp_path / "cut.fasta.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FastaError, match=r"cut.fasta.gz: truncated gzip file") as error:
        list(read_fasta(path))
    assert str(error.value).startswith(str(path))
    path.write_bytes(whole[:-3] + b"\xff\xff\xff")  # a damaged trailer (CRC/size)
    with pytest.raises(FastaError, match=r"cut.fasta.gz: corrupt gzip data"):
        list(read_fasta(path))
    path.write_bytes(whole + b"garbage")
    with pytest.raises(FastaError, match=r"cut.fasta.gz: corrupt gzip file"):
        list(read_fasta(path))


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"binary data \(byte 0x1a at offset 6\)"),
        (b">a\nMK\n" * 100 + b"\x00", r"binary data \(byte 0x00 at offset 600\)"),
        (b">a\nMK\n" * 20000 + b"\x00", r"binary data \(a NUL byte at offset 120000 of the text\)"),
        (b"BZh91AY&SY", r"a bzip2-compressed file; only plain or gzip FASTA"),
        (b"\xfd7zXZ\x00\x00", r"a xz-compressed file"),
        (b"PK\x03\x04\x14\x00", r"a zip-compressed file"),
    ],
)
def test_binary_and_other_compressed_files_are_errors_naming_the_file(tmp_path, data, message):
    path = tmp_path / "weird.bin"
    path.write_bytes(data)
    with pytest.raises(FastaError, match=message) as error:
        list(read_fasta(path))
    assert str(error.value).startswith(f"{path}: ")


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="alphabet must be"):
        list(read_fasta(io.StringIO(">a\nH\n"), alphabet="HÉ"))
