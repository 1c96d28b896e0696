"""``prepare`` / ``PreparedDataset`` / ``performers prepare``: prepared data equals the in-memory
reader token for token, splits (tags, files, hash), dedupe, skipped records, malformed input,
atomicity, corruption detection and the command line."""

import gzip
import itertools
import json
import os
import pickle
import random

import numpy as np
import pytest

from performers.cli import main
from performers.proteins import ConcatenatedWindows, FastaError, ProteinTokenizer, default_corpus, read_fasta
from performers.proteins.data import split_of
from performers.proteins.prepared import (
    PreparedDataset,
    PreparedDatasetError,
    hash_split,
    is_prepared,
    prepare,
    tag_split,
)
from performers.proteins.prepared_writer import SplitWriter

TOK = ProteinTokenizer()


@pytest.fixture(scope="module")
def sample():
    """Real records of the shipped corpus: 120 train, 15 valid, 15 test (headers kept)."""
    wanted = {"train": 120, "valid": 15, "test": 15}
    records = []
    for record in read_fasta(default_corpus()):
        split = split_of(record)
        if wanted[split]:
            wanted[split] -= 1
            records.append(record)
            if not any(wanted.values()):
                break
    return records


def write_fasta(path, records, gz=False, width=60):
    lines = []
    for r in records:
        lines.append(f">{r.header}")
        lines += [r.sequence[i : i + width] for i in range(0, len(r.sequence), width)]
    text = "\n".join(lines) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def split_records(path):
    out = {}
    for r in read_fasta(path):
        out.setdefault(split_of(r), []).append(r)
    return out


def assert_equals_reader(directory, expected):
    """Every split of ``directory`` holds exactly ``expected[split]`` (records), encoded."""
    for split, records in expected.items():
        data = PreparedDataset(directory, split)
        assert len(data) == len(records)
        for i, r in enumerate(records):
            assert data.tokens(i).tolist() == TOK.encode(r.sequence)
            assert data.record_id(i) == r.id
            assert data.length(i) == len(r) + 2
        stream = [t for r in records for t in TOK.encode(r.sequence)]
        assert data.num_tokens == len(stream) and data.stream(0, data.num_tokens).tolist() == stream
        assert data.lengths.tolist() == [len(r) + 2 for r in records]


def test_prepared_data_equals_the_reader_token_for_token(tmp_path, sample):
    path = write_fasta(tmp_path / "corpus.fasta.gz", sample, gz=True)
    manifest = prepare([path], tmp_path / "out", log=None)
    expected = split_records(path)
    assert_equals_reader(tmp_path / "out", expected)
    assert is_prepared(tmp_path / "out")
    # The split's stream is what concatenated-window training builds in memory.
    train = PreparedDataset(tmp_path / "out", "train")
    windows = ConcatenatedWindows([r.sequence for r in expected["train"]], TOK, 512)
    assert np.array_equal(train.stream(0, windows.windows.numel()), windows.windows.flatten().numpy())
    # Manifest: inputs with SHA-256 and size, options, counts per split.
    import hashlib

    (entry,) = manifest["inputs"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size and entry["records"] == len(sample)
    assert {s: manifest["splits"][s]["records"] for s in expected} == {"train": 120, "valid": 15, "test": 15}
    assert manifest["totals"]["residues"] == sum(len(r) for r in sample)
    assert manifest["options"]["split_by"] == "tags" and manifest["seconds"] > 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    umask = os.umask(0o022)
    os.umask(umask)
    for file in (tmp_path / "out").rglob("*"):  # the user's umask, not tempfile's private modes
        assert file.stat().st_mode & 0o777 == (0o777 if file.is_dir() else 0o666) & ~umask, file
    assert ProteinTokenizer.load(tmp_path / "out" / "tokenizer.json") == TOK
    assert train.tokenizer == TOK and train.manifest == manifest
    PreparedDataset(tmp_path / "out", "test").verify()


def test_hash_split_is_stable_under_reordering_and_near_the_fractions(tmp_path):
    rng = random.Random(0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    sequences = sorted({"".join(rng.choices(letters, k=rng.randint(1, 30))) for _ in range(3000)})
    records = [f">s{i}\n{s}\n" for i, s in enumerate(sequences)]
    (tmp_path / "a.fa").write_text("".join(records[:1500]))
    (tmp_path / "b.fa").write_text("".join(records[1500:]))
    rng.shuffle(records)
    (tmp_path / "c.fa").write_text("".join(records[:1000]))
    (tmp_path / "d.fa").write_text("".join(records[1000:]))
    options = {"valid_fraction": 0.1, "test_fraction": 0.2, "log": None}
    prepare([tmp_path / "a.fa", tmp_path / "b.fa"], tmp_path / "one", **options)
    prepare([tmp_path / "d.fa", tmp_path / "c.fa"], tmp_path / "two", **options)

    def split_of_sequence(directory):
        out = {}
        for split in ("train", "valid", "test"):
            data = PreparedDataset(directory, split)
            for i in range(len(data)):
                out[TOK.decode(data.tokens(i).tolist())] = split
        return out

    one, two = split_of_sequence(tmp_path / "one"), split_of_sequence(tmp_path / "two")
    assert one == two and len(one) == len(sequences)
    assert all(one[s] == hash_split(s.encode(), 0.1, 0.2) for s in sequences)
    n = len(sequences)
    for split, fraction in (("valid", 0.1), ("test", 0.2)):  # binomial: within 5 standard deviations
        count = sum(v == split for v in one.values())
        assert abs(count - n * fraction) < 5 * (n * fraction * (1 - fraction)) ** 0.5


def test_flip_tags_and_per_split_files(tmp_path):
    (tmp_path / "flip.fa").write_text(
        ">a SET=train VALIDATION=False\nMK\n>b SET=train VALIDATION=True\nVV\n"
        ">c SET=test VALIDATION=False\nWW\n"
    )
    prepare([tmp_path / "flip.fa"], tmp_path / "flip", log=None)
    assert [PreparedDataset(tmp_path / "flip", s).record_id(0) for s in ("train", "valid", "test")] == [
        "a",
        "b",
        "c",
    ]
    for header in ("a SET=train VALIDATION=True", "b split=test", "c SET=train"):
        record = next(read_fasta(iter_text(f">{header}\nM\n")))
        assert tag_split(header, "x") == split_of(record)
    # Per-split files: the file decides, tags are ignored.
    prepare({"train": [tmp_path / "flip.fa"], "test": tmp_path / "flip.fa"}, tmp_path / "files", log=None)
    assert (
        len(PreparedDataset(tmp_path / "files", "train"))
        == 3
        == len(PreparedDataset(tmp_path / "files", "test"))
    )
    with pytest.raises(PreparedDatasetError, match=r"no 'valid' split \(this dataset has test, train\)"):
        PreparedDataset(tmp_path / "files", "valid")


def iter_text(text):
    import io

    return io.StringIO(text)


def test_untagged_record_is_an_error_unless_split_by_hash(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a split=train\nMK\n>b desc\nVV\n")
    with pytest.raises(FastaError, match=r"x.fa:3: record 'b' has no split tag"):
        prepare([path], tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()
    manifest = prepare([path], tmp_path / "out", test_fraction=0.5, log=None)
    assert manifest["options"]["split_by"] == "hash" and manifest["totals"]["records"] == 2


def test_dedupe_keeps_the_first_across_files(tmp_path):
    (tmp_path / "a.fa").write_text(">a1 split=train\nMKV\n>a2 split=train\nmkv\n>a3 split=test\nWW\n")
    (tmp_path / "b.fa").write_text(">b1 split=valid\nMK\nV\n>b2 split=valid\nWW\n>b3 split=valid\nPP\n")
    manifest = prepare([tmp_path / "a.fa", tmp_path / "b.fa"], tmp_path / "out", dedupe=True, log=None)
    train, valid = PreparedDataset(tmp_path / "out", "train"), PreparedDataset(tmp_path / "out", "valid")
    assert [train.record_id(i) for i in range(len(train))] == ["a1"]
    assert [valid.record_id(i) for i in range(len(valid))] == ["b3"]
    assert manifest["splits"]["train"]["duplicates_removed"] == 1
    assert manifest["splits"]["valid"]["duplicates_removed"] == 2
    assert manifest["totals"]["duplicates_removed"] == 3
    assert manifest["options"]["dedupe_memory_bytes_per_unique_sequence"] == 16


def test_skip_invalid_counts_skipped_records(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(
        ">a split=train\nMK\n>b split=train\nMJ\n>c split=train\n>\nMK\n"
        ">d split=train\nMU\n>e split=train\nW\n"
    )
    with pytest.raises(FastaError, match=r"x.fa:4: illegal character 'J' in record 'b' \(column 2\)"):
        prepare([path], tmp_path / "out", log=None)
    manifest = prepare([path], tmp_path / "out", skip_invalid=True, rare="reject", log=None)
    data = PreparedDataset(tmp_path / "out", "train")
    assert [data.record_id(i) for i in range(len(data))] == ["a", "e"]
    assert manifest["totals"]["skipped"] == 4 == manifest["inputs"][0]["skipped"]
    assert "empty header" in manifest["inputs"][0]["skipped_examples"][2]


@pytest.mark.parametrize(
    "text,message",
    [
        ("MKV\n>a split=train\nMK\n", r"x.fa:1: sequence data before the first '>' header"),
        (">a split=train\nMKOJ\n", r"x.fa:2: illegal character 'J' in record 'a' \(column 4\)"),
        (">a split=train\n>b split=train\nMK\n", r"x.fa:1: record 'a' has no sequence"),
        (">a split=train\nMK\n>\nMK\n", r"x.fa:3: empty header"),
    ],
)
def test_malformed_input_names_file_line_and_column_and_leaves_nothing(tmp_path, text, message):
    (tmp_path / "x.fa").write_text(text)
    with pytest.raises(FastaError, match=message):
        prepare([tmp_path / "x.fa"], tmp_path / "out", log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]  # no dataset, no temporary directory


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_truncated_gzip_and_binary_files_fail_even_when_skipping(tmp_path, sample, skip_invalid):
    whole = gzip.compress("".join(f">{r.header}\n{r.sequence}\n" for r in sample).encode())
    (tmp_path / "cut.fa.gz").write_bytes(whole[: len(whole) * 3 // 4])
    with pytest.raises(FastaError, match=r"cut.fa.gz: truncated gzip file"):
        prepare([tmp_path / "cut.fa.gz"], tmp_path / "out", skip_invalid=skip_invalid, log=None)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(FastaError, match=r"image.png: binary data"):
        prepare([tmp_path / "image.png"], tmp_path / "out", skip_invalid=skip_invalid, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.fa.gz", "image.png"]


def test_length_one_sequences_and_repeated_ids_are_allowed(tmp_path):
    (tmp_path / "x.fa").write_text(">p1 split=train\nM\n>p1 split=train\nK\n")
    prepare([tmp_path / "x.fa"], tmp_path / "out", log=None)
    data = PreparedDataset(tmp_path / "out", "train")
    assert [data.tokens(i).tolist() for i in range(2)] == [TOK.encode("M"), TOK.encode("K")]
    assert data.record_id(0) == data.record_id(1) == "p1" and data.lengths.tolist() == [3, 3]


def test_a_failure_midway_leaves_no_dataset_and_no_temporary_directory(tmp_path, sample, monkeypatch):
    path = write_fasta(tmp_path / "x.fa", sample)
    add = SplitWriter.add
    calls = itertools.count()

    def failing_add(self, *args):
        if next(calls) == 100:
            raise OSError("disk full (simulated)")
        add(self, *args)

    monkeypatch.setattr(SplitWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        prepare([path], tmp_path / "out", shard_tokens=2000, log=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]
    monkeypatch.setattr(SplitWriter, "add", add)
    prepare([path], tmp_path / "out", log=None)
    with pytest.raises(FileExistsError, match="already exists"):
        prepare([path], tmp_path / "out", log=None)
    prepare([path], tmp_path / "out", valid_fraction=0.5, overwrite=True, log=None)
    assert PreparedDataset(tmp_path / "out").manifest["options"]["split_by"] == "hash"


def test_stream_and_records_across_shard_boundaries(tmp_path, sample):
    path = write_fasta(tmp_path / "x.fa", sample[:40])
    prepare({"train": [path]}, tmp_path / "out", shard_tokens=1000, log=None)
    data = PreparedDataset(tmp_path / "out", "train")
    shards = data.manifest["splits"]["train"]["shards"]
    assert len(shards) > 5 and all(s["tokens"] <= 1000 or s["records"] == 1 for s in shards)
    stream = np.concatenate([TOK.encode(r.sequence) for r in sample[:40]])
    rng = random.Random(0)
    for _ in range(200):
        start = rng.randrange(len(stream))
        stop = rng.randrange(start, len(stream) + 1)
        assert np.array_equal(data.stream(start, stop), stream[start:stop])
    assert np.array_equal(data.stream(0, len(stream)), stream)
    assert [data.tokens(i).tolist() for i in range(40)] == [TOK.encode(r.sequence) for r in sample[:40]]
    assert data.tokens(-1).tolist() == TOK.encode(sample[39].sequence)
    with pytest.raises(IndexError):
        data.tokens(40)
    with pytest.raises(IndexError):
        data.stream(0, len(stream) + 1)
    copy = pickle.loads(pickle.dumps(data))  # DataLoader workers (spawn) reopen the maps
    assert np.array_equal(copy.stream(0, len(stream)), stream)


def test_corrupt_or_foreign_directories_are_refused_on_open(tmp_path, sample):
    path = write_fasta(tmp_path / "x.fa", sample[:30])
    prepare({"train": [path]}, tmp_path / "out", shard_tokens=3000, log=None)
    out = tmp_path / "out"
    with pytest.raises(PreparedDatasetError, match="not a prepared dataset"):
        PreparedDataset(tmp_path, "train")
    assert not is_prepared(tmp_path) and is_prepared(out)
    shard = out / "train" / "tokens-00001.u8"
    good = shard.read_bytes()
    shard.write_bytes(good[:-10])
    with pytest.raises(PreparedDatasetError, match=r"tokens-00001.u8: token shard file truncated"):
        PreparedDataset(out, "train")
    shard.unlink()
    with pytest.raises(PreparedDatasetError, match=r"tokens-00001.u8: token shard file missing"):
        PreparedDataset(out, "train")
    shard.write_bytes(good[:5] + bytes([good[5] ^ 1]) + good[6:])  # same size, one byte changed
    data = PreparedDataset(out, "train")
    with pytest.raises(PreparedDatasetError, match=r"tokens-00001\.u8: contents differ"):
        data.verify()
    shard.write_bytes(good)
    lengths = out / "train" / "lengths.i32"
    lengths.write_bytes(lengths.read_bytes()[:-4])
    with pytest.raises(PreparedDatasetError, match=r"lengths\.i32: lengths file truncated"):
        PreparedDataset(out, "train")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        PreparedDatasetError, match=r"format version 99, but this version of performers reads"
    ):
        PreparedDataset(out, "train")
    assert not is_prepared(out)


def test_bad_arguments(tmp_path, sample):
    path = write_fasta(tmp_path / "x.fa", sample[:3])
    for kwargs, message in [
        ({"valid_fraction": 1.2}, "valid_fraction must be in"),
        ({"valid_fraction": 0.6, "test_fraction": 0.5}, "must be < 1"),
        ({"shard_tokens": 0}, "shard_tokens must be a positive integer"),
        ({"rare": "drop"}, "rare must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            prepare([path], tmp_path / "out", log=None, **kwargs)
    with pytest.raises(ValueError, match="cannot be combined with per-split files"):
        prepare({"train": [path]}, tmp_path / "out", valid_fraction=0.1, log=None)
    with pytest.raises(FileNotFoundError, match=r"missing\.fa: no such FASTA file"):
        prepare([tmp_path / "missing.fa"], tmp_path / "out", log=None)
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(ValueError, match="no records"):
        prepare([tmp_path / "empty.fa"], tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


def test_the_command_line_end_to_end(tmp_path, sample, capsys, cli_error):
    path = write_fasta(tmp_path / "x.fa.gz", sample, gz=True)
    assert (
        main(["prepare", str(path), "--out", str(tmp_path / "a"), "--dedupe", "--shard-tokens", "5000"]) == 0
    )
    printed = capsys.readouterr().out
    assert "prepared 150 records" in printed and "residues/s" in printed and "valid:" in printed
    assert_equals_reader(tmp_path / "a", split_records(path))
    args = ["prepare", "--out", str(tmp_path / "b"), "--train", str(path), "--test", str(path)]
    assert main(args) == 0
    assert len(PreparedDataset(tmp_path / "b", "test")) == 150
    assert main(["prepare", str(path), "--out", str(tmp_path / "c"), "--valid-fraction", "0.5"]) == 0
    cli_error(
        ["prepare", str(path), "--out", str(tmp_path / "c")], match=r"performers prepare: .*already exists"
    )
    cli_error(["prepare", str(path), "--out", str(tmp_path / "d"), "--train", str(path)], match="not both")
    (tmp_path / "bad.fa").write_text(">a split=train\nMJ\n")
    cli_error(
        ["prepare", str(tmp_path / "bad.fa"), "--out", str(tmp_path / "d")],
        match=r"bad.fa:2: illegal character 'J'",
    )
    assert (
        main(["prepare", str(tmp_path / "bad.fa"), str(path), "--out", str(tmp_path / "d"), "--skip-invalid"])
        == 0
    )
    assert PreparedDataset(tmp_path / "d", "train").manifest["totals"]["skipped"] == 1


def test_benchmark_builds_a_synthetic_corpus_and_measures_in_a_subprocess(tmp_path, sample):
    from performers.bench.prepare import measure, parse_size, synthetic_fasta

    source = write_fasta(tmp_path / "src.fa", sample[:20])
    info = synthetic_fasta(tmp_path / "syn.fa", 20_000, seed=1, source=source)
    records = list(read_fasta(tmp_path / "syn.fa"))
    assert info["bytes"] >= 20_000 and info["records"] == len(records) and info["passes"] >= 2
    assert {r.sequence for r in records} == {r.sequence for r in sample[:20]}  # the real proteins
    assert len({r.id for r in records}) == len(records)  # new, unique ids
    result = measure([tmp_path / "syn.fa"], workdir=tmp_path, valid_fraction=0.1)
    assert result["residues"] == info["residues"] and result["residues_per_second"] > 0
    assert result["peak_rss_mib"] >= result["peak_rss_growth_mib"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.fa", "syn.fa"]
    assert parse_size("200MB") == 200_000_000 and parse_size("2GiB") == 2**31
