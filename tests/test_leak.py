"""The pair-leak sentence: tile digests, and a pair's training tiles compared with the run's splits by content."""

from types import SimpleNamespace

import pytest
import torch

from progaug.data.tiles import TileSet, tile_digest
from progaug.evaluation.pipeline import leak
from progaug.evaluation.protocol import real_subset


def tiles(n: int, offset: int) -> TileSet:
    """``n`` distinct random tiles per class (classes a, b), seeded by ``offset``."""
    gen = torch.Generator().manual_seed(offset)
    images = torch.randint(0, 256, (2 * n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    return TileSet(images, torch.tensor([0] * n + [1] * n), ("a", "b"), tuple(f"t{offset}:{i}" for i in range(2 * n)))


@pytest.fixture
def splits():
    return {"train": tiles(4, 0), "val": tiles(2, 1), "test": tiles(2, 2)}


def pair_of(*digests: str, name: str = "somewhere") -> SimpleNamespace:
    return SimpleNamespace(card={"data": {"name": name, "split": "all", "digests": {"a": sorted(digests)}}})


def test_digest_follows_pixels_not_names():
    x = torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = x.clone()
    assert tile_digest(x) == tile_digest(y) and len(tile_digest(x)) == 16
    y[0, 0, 0] ^= 1
    assert tile_digest(x) != tile_digest(y)
    flat = torch.zeros(3, 4, 4, dtype=torch.uint8)
    assert tile_digest(flat) != tile_digest(flat.reshape(3, 2, 8))  # the size is part of the digest
    with pytest.raises(ValueError, match=r"\(3, S, S\) uint8 tile, got \(3, 8, 8\) torch.float32"):
        tile_digest(x.float())


def test_digests_by_class_sorted_per_class(splits):
    train = splits["train"]
    by_class = train.digests_by_class()
    assert set(by_class) == {"a", "b"} and all(len(v) == 4 and v == sorted(v) for v in by_class.values())
    assert set(by_class["a"]) == set(train.of_class("a").digests())
    assert train.digests() is train.digests()  # hashed once per set


def test_pair_of_exactly_the_training_split(splits):
    text = leak(pair_of(*splits["train"].digests()), "elsewhere", None, splits)
    assert text == "none: every tile the pair saw (8) is one the classifier trains on (compared by pixel content)"


def test_a_held_out_tile_contaminates(splits):
    text = leak(pair_of(*splits["train"].digests(), splits["test"].digests()[3]), "x", None, splits)
    assert text.startswith("CONTAMINATED: the pair was trained on 0 validation and 1 test tiles")


def test_subsets_per_seed_name_what_the_pair_saw(splits):
    text = leak(pair_of(*splits["train"].digests(), "f" * 16), "x", 2, splits)
    assert text.startswith("the pair saw 8 of the training split's 8 tiles and 1 tiles from outside this data; "
                           "each seed's classifier sees 2 per class")


def test_a_fixed_subset_is_compared_exactly(splits):
    train = splits["train"]
    chosen = real_subset(train, 3, 2)[1]
    digests = train.digests()
    subset = [digests[int(i)] for index in chosen.values() for i in index]
    assert leak(pair_of(*subset), "x", 2, splits, subset_seed=3).startswith("none: every tile the pair saw (4)")
    other = next(d for d in digests if d not in subset)
    assert leak(pair_of(*subset, other), "x", 2, splits, subset_seed=3).startswith(
        "the pair saw 1 tiles the classifier never sees (1 of the training split, 0 from outside this data")
    # the same pair against another seed's subset: what it saw is no longer all the classifier's
    seed = next(s for s in range(4, 50) if {digests[int(i)] for index in real_subset(train, s, 2)[1].values() for i in index} != set(subset))
    assert "tiles the classifier never sees" in leak(pair_of(*subset), "x", 2, splits, subset_seed=seed)


def test_cards_without_digests_compare_names(splits):
    old = SimpleNamespace(card={"data": {"name": "hgsc", "split": "train", "counts": {"a": 4, "b": 4}}})
    assert leak(old, "hgsc", None, splits) == "none: the pair saw exactly the classifier's training tiles"
    assert leak(old, "hgsc", 2, splits).startswith("the pair was trained on {'a': 4, 'b': 4} training tiles")
    assert leak(old, "mine", 2, splits).startswith("unknown: the pair card names its data as 'hgsc'")
