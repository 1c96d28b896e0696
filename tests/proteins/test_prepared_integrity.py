"""A prepared dataset survives a full disk and can be verified: ``prepare`` refuses to start
without the space its estimate needs, a write refused midway leaves an earlier dataset
byte-identical and no temporary directory, and ``verify_prepared`` / ``performers prepare
--verify`` / ``performers train --verify-data`` name every file that changed or is missing."""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from performers.cli import main
from performers.proteins import verify_prepared
from performers.proteins.prepared import NotEnoughSpaceError, prepare, size_estimate
from performers.proteins.prepared_writer import _HashedFile
from performers.utils import DiskWriteError
from tests.cli.test_proteins import TINY
from tests.proteins.test_prepared import sample, write_fasta  # noqa: F401  (sample: a fixture)
from tests.utils.test_files import file_size_limit  # noqa: F401  (a fixture)

Usage = namedtuple("Usage", "total used free")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def prepared(tmp_path, sample):  # noqa: F811
    """The 150 sample records (train/valid/test by their tags) in shards of at most 5000 tokens."""
    fasta = write_fasta(tmp_path / "x.fa", sample)
    prepare([fasta], tmp_path / "data", shard_tokens=5000, log=None)
    return tmp_path / "data"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # a residue in the middle: <cls>/<eos> at the ends stay intact
    path.write_bytes(bytes(data))


def test_prepare_refuses_at_once_without_the_space_it_estimates(tmp_path, sample, monkeypatch, cli_error):  # noqa: F811
    fasta = write_fasta(tmp_path / "x.fa", sample)
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(10**6, 10**6 - 1000, 1000))
    needed = size_estimate([fasta])
    assert needed == fasta.stat().st_size
    with pytest.raises(NotEnoughSpaceError, match=f"{tmp_path / 'out'}: not enough free space") as caught:
        prepare([fasta], tmp_path / "out", log=None)
    assert f"about {needed:,} bytes" in str(caught.value) and "1,000 bytes are free" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]  # nothing written
    cli_error(["prepare", str(fasta), "--out", str(tmp_path / "out")], match=f"about {needed:,} bytes")
    # A gzip input is counted by its uncompressed size (at least twice the compressed one).
    gz = write_fasta(tmp_path / "x.fa.gz", sample, gz=True)
    assert size_estimate([gz]) == max(fasta.stat().st_size, 2 * gz.stat().st_size)


def test_a_shard_on_a_full_disk_keeps_the_earlier_dataset_and_no_temporaries(prepared, monkeypatch):
    before = snapshot(prepared.parent)
    write = _HashedFile.write

    def full_disk(self, data):
        if "tokens-00002" in self.name:  # the third shard: two were written
            write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, data)

    monkeypatch.setattr(_HashedFile, "write", full_disk)
    fasta = prepared.parent / "x.fa"
    with pytest.raises(
        DiskWriteError, match=f"^{prepared}: cannot be written \\(No space left on device\\)"
    ) as caught:
        prepare([fasta], prepared, shard_tokens=5000, overwrite=True, log=None)
    assert caught.value.needed == size_estimate([fasta])
    assert snapshot(prepared.parent) == before  # the earlier dataset byte for byte, no .tmp-* left


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_shard_past_a_real_file_size_limit(tmp_path, sample, file_size_limit):  # noqa: F811
    fasta = write_fasta(tmp_path / "x.fa", sample)
    file_size_limit(10_000)  # the input (written above) is larger; one 40 kB shard is refused
    try:
        with pytest.raises(
            DiskWriteError, match=f"^{tmp_path / 'out'}: cannot be written \\(File too large\\)"
        ):
            prepare([fasta], tmp_path / "out", log=None)
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.fa"]


def test_verify_names_every_changed_missing_or_truncated_file(prepared, capsys, cli_error):
    assert verify_prepared(prepared) == []
    assert main(["prepare", "--verify", str(prepared)]) == 0
    assert "every file matches" in capsys.readouterr().out
    shards = sorted((prepared / "train").glob("tokens-*.u8"))
    assert len(shards) >= 3
    flip_a_byte(shards[1])
    (prepared / "valid" / "tokens-00000.u8").unlink()
    with open(shards[2], "r+b") as handle:
        handle.truncate(10)
    problems = verify_prepared(prepared)
    assert problems == [
        f"{shards[1]}: contents differ from the manifest's SHA-256 (changed or corrupt)",
        f"{shards[2]}: truncated (10 bytes, the manifest says {manifest_bytes(prepared, shards[2])})",
        f"{prepared / 'valid' / 'tokens-00000.u8'}: missing",
    ]
    assert verify_prepared(prepared, hashes=False) == problems[1:]  # sizes alone miss the flip
    line = cli_error(["prepare", "--verify", str(prepared)], match="3 file\\(s\\) do not match the manifest")
    assert all(problem in line for problem in problems)
    cli_error(["prepare", "--verify", str(prepared), "--out", "x"], match="give no INPUT, --out")


def manifest_bytes(prepared: Path, shard: Path) -> int:
    """The size the manifest records for ``shard``."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    rel = str(shard.relative_to(prepared))
    return next(
        s["bytes"] for split in manifest["splits"].values() for s in split["shards"] if s["file"] == rel
    )


TRAIN = ["train", *TINY, "--steps", "1", "--train-limit", "8", "--test-limit", "4", "--workers", "0"]


def test_training_checks_sizes_always_and_hashes_with_verify_data(prepared, tmp_path, cli_error):
    shard = prepared / "train" / "tokens-00001.u8"
    flip_a_byte(shard)
    cli_error(
        [*TRAIN, "--data", str(prepared), "--verify-data", "--out", str(tmp_path / "run")],
        match=f"--verify-data: 1 file\\(s\\) of {prepared} do not match its manifest: {shard}: contents",
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with open(shard, "r+b") as handle:
        handle.truncate(100)
    cli_error(
        [*TRAIN, "--data", str(prepared), "--out", str(tmp_path / "run")],
        match=f"{shard}: token shard file truncated",
    )
    cli_error(
        [*TRAIN, "--verify-data", "--out", str(tmp_path / "run")], match="--verify-data checks prepared data"
    )
