import math

import pytest
import torch

from performers.proteins import ProteinTokenizer, read_fasta
from performers.proteins.data import (
    CausalLMCollator,
    ConcatenatedWindows,
    MaskedLMCollator,
    ProteinSequences,
    UnigramBaseline,
    read_split,
    split_of,
)
from performers.utils import shipped_data
from tests.helpers.numerics import Z

DATA = shipped_data("proteins")
TOK = ProteinTokenizer()


def random_proteins(n, low=20, high=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    out = []
    for _ in range(n):
        length = int(torch.randint(low, high, (1,), generator=g))
        out.append("".join(letters[i] for i in torch.randint(0, 20, (length,), generator=g).tolist()))
    return out


def test_masking_statistics_follow_the_recipe():
    proteins = random_proteins(400)
    dataset = ProteinSequences(proteins, TOK, max_length=256)
    batch = MaskedLMCollator(TOK, generator=torch.Generator().manual_seed(1))(
        [dataset[i] for i in range(400)]
    )
    original, _ = TOK.batch_encode(proteins, max_length=256)
    residue = original >= len(TOK.special_ids)
    selected = batch["labels"] != -100
    n = int(residue.sum())
    k = int(selected.sum())
    # Masking rate: Binomial(n, 0.15) → |k/n - 0.15| < Z·sqrt(p(1-p)/n).
    assert abs(k / n - 0.15) < Z * math.sqrt(0.15 * 0.85 / n)
    assert not (selected & ~residue).any()  # special and padding tokens are never selected
    assert torch.equal(batch["labels"][selected], original[selected])
    masked = (batch["input_ids"] == TOK.mask_id) & selected
    kept = (batch["input_ids"] == original) & selected
    # Among selected: 80 % <mask>; 10 % random (which equals the original w.p. 1/25) + 10 % kept.
    p_kept = 0.1 + 0.1 / len(TOK.residue_ids)
    for count, p in ((int(masked.sum()), 0.8), (int(kept.sum()), p_kept)):
        assert abs(count / k - p) < Z * math.sqrt(p * (1 - p) / k)
    unselected = ~selected
    assert torch.equal(batch["input_ids"][unselected], original[unselected])
    assert torch.equal(batch["attention_mask"].bool(), original != TOK.pad_id)


def test_masking_is_reproducible_with_a_seeded_generator():
    items = [torch.tensor(TOK.encode(p)) for p in random_proteins(8)]
    a = MaskedLMCollator(TOK, generator=torch.Generator().manual_seed(3))(items)
    b = MaskedLMCollator(TOK, generator=torch.Generator().manual_seed(3))(items)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_causal_collation_ignores_padding():
    batch = CausalLMCollator(TOK)([torch.tensor(TOK.encode("MK")), torch.tensor(TOK.encode("MKVL"))])
    assert batch["labels"][0].tolist() == [
        TOK.cls_id,
        *TOK.encode("MK", add_special_tokens=False),
        TOK.eos_id,
        -100,
        -100,
    ]


def test_crops_random_for_training_fixed_for_evaluation():
    protein = "ACDEFGHIKLMNPQRSTVWY" * 5
    fixed = ProteinSequences([protein], TOK, max_length=12)
    assert TOK.decode(fixed[0]) == protein[:10] and fixed[0].numel() == 12
    crops = ProteinSequences(
        [protein], TOK, max_length=12, random_crop=True, generator=torch.Generator().manual_seed(0)
    )
    seen = {TOK.decode(crops[0]) for _ in range(30)}
    assert len(seen) > 5 and all(s in protein and len(s) == 10 for s in seen)
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        ProteinSequences([protein], TOK, max_length=2)


def test_concatenated_windows():
    windows = ConcatenatedWindows(["MK", "VLL", "A"], TOK, window=4)
    # <cls> M K <eos> | <cls> V L L | <eos> <cls> A <eos>
    assert len(windows) == 3
    assert TOK.decode(windows[1], skip_special_tokens=False) == "<cls>VLL"


def test_splits_of_the_shipped_corpus_and_flip():
    corpus = DATA / "mlm_corpus_refseq17.fasta.gz"
    counts = {"train": 0, "valid": 0, "test": 0}
    for record in read_fasta(corpus):
        counts[split_of(record)] += 1
    assert counts == {"train": 46153, "valid": 940, "test": 916}  # as in its SOURCE.md
    labels = DATA / "flip_secondary_structure" / "sampled_labels.fasta.gz"
    assert len(read_split(labels, "test")) == 364
    assert len(read_split(labels, "valid")) == 1080
    with pytest.raises(ValueError, match="split must be"):
        read_split(labels, "dev")


def test_unigram_baseline():
    baseline = UnigramBaseline(["AAAAC", "AAG"], TOK)
    result = baseline.evaluate(["AC"])
    assert baseline.most_frequent == "A" and result["accuracy"] == 0.5 and result["residues"] == 2
    total = 8 + len(TOK.residues)
    # add-one smoothing: A seen 6 times, C once
    expected = math.exp(-(math.log(7 / total) + math.log(2 / total)) / 2)
    assert result["perplexity"] == pytest.approx(expected)


def test_read_split_parses_once_and_rereads_a_changed_file(tmp_path):
    import os

    from performers.proteins.data import _read_splits, read_split

    path = tmp_path / "tagged.fasta"
    path.write_text(">a split=train\nACD\n>b split=test\nEFG\n>c split=train\nHIK\n")
    assert read_split(path, "train") == ["ACD", "HIK"]
    hits = _read_splits.cache_info().hits
    assert read_split(path, "test") == ["EFG"] and read_split(path, "valid") == []
    assert _read_splits.cache_info().hits == hits + 2  # the other splits came from the same parse
    train = read_split(path, "train")
    train.append("MUTATED")  # callers get their own list
    assert read_split(path, "train") == ["ACD", "HIK"]
    path.write_text(">a split=train\nLMN\n")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert read_split(path, "train") == ["LMN"]
