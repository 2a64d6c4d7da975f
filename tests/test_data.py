"""Demo tiles (spatial split, counts, determinism), the folder loader's handling of bad files, and the
source-class tiles a pair generates from."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from progaug.data import HGSC_CLASSES, TileSpec, folder_tiles, hgsc_tiles, load_rgb, source_tiles, to_rgb
from progaug.data.hgsc import block_split


@pytest.fixture(scope="module")
def splits():
    return {s: hgsc_tiles(s) for s in ("train", "val", "test")}


def _boxes(tiles):
    out = []
    for src in tiles.sources:
        name, xy = src.split(":")
        x, y = map(int, xy.split(","))
        out.append((name, x, y))
    return out


class TestHgscTiles:
    def test_every_split_holds_both_classes(self, splits):
        for split, tiles in splits.items():
            counts = tiles.counts()
            assert set(counts) == set(HGSC_CLASSES)
            assert all(n > 30 for n in counts.values()), (split, counts)
        assert all(n <= 500 for n in splits["train"].counts().values())

    def test_documented_counts(self, splits):
        # the figures in docs/data.md
        assert splits["train"].counts() == {"stroma": 288, "tumour": 308}
        assert splits["val"].counts() == {"stroma": 40, "tumour": 78}
        assert splits["test"].counts() == {"stroma": 90, "tumour": 93}

    def test_both_classes_from_one_crop(self, splits):
        # the honest task: a classifier cannot tell the classes apart by crop, stain batch or scanner
        for tiles in splits.values():
            assert {src.split(":")[0] for src in tiles.sources} == {"hgsc_nest.jpg"}

    def test_class_follows_the_nucleus_mask(self):
        from progaug.data.hgsc import tile_class

        spec = TileSpec()
        types = np.zeros((64, 64), dtype=np.int32)
        assert tile_class(types, spec) is None  # no nuclei
        types[:8, :8] = 3  # 64 neoplastic pixels
        assert tile_class(types, spec) == "tumour"
        types[8:12, :8] = 1  # 32 connective: neoplastic share 0.67 -> mixed, no class
        assert tile_class(types, spec) is None
        types[:] = 0
        types[:7, :7] = 1  # 49 pixels: too few nuclei
        assert tile_class(types, spec) is None
        types[:8, :8] = 1
        assert tile_class(types, spec) == "stroma"
        types[:8, :8] = 2  # inflammatory belongs to neither class
        assert tile_class(types, spec) is None

    def test_splits_never_overlap_in_space(self, splits):
        size = 64
        train = _boxes(splits["train"])
        for held in ("val", "test"):
            for name, x, y in _boxes(splits[held]):
                for n2, x2, y2 in train:
                    if n2 == name:
                        assert abs(x - x2) >= size or abs(y - y2) >= size

    def test_deterministic(self, splits):
        again = hgsc_tiles("val")
        assert torch.equal(again.images, splits["val"].images) and again.sources == splits["val"].sources

    def test_shapes_and_dtype(self, splits):
        t = splits["test"]
        assert t.images.dtype == torch.uint8 and t.images.shape[1:] == (3, 64, 64)

    def test_block_split_rule(self):
        spec = TileSpec()
        assert block_split(0, 0, spec) == "val" and block_split(500, 0, spec) == "train"
        assert block_split(0, 500, spec) == "test"
        assert block_split(200, 0, spec) == "val"  # crosses into the next block, of the same split: kept
        assert block_split(480, 0, spec) is None  # touches a val and a train block
        assert block_split(1436, 1436, spec) == "train"  # last tile of the crop

    def test_spec_validation(self):
        with pytest.raises(ValueError, match="`class_share` must be in"):
            TileSpec(class_share=0.4)
        with pytest.raises(ValueError, match="`tile_size` 300 must not exceed `block_size` 250"):
            TileSpec(tile_size=300)

    def test_bad_split(self):
        with pytest.raises(ValueError, match="`split` must be one of"):
            hgsc_tiles("holdout")


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


class TestImageModes:
    @pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
    def test_modes_become_rgb(self, mode):
        rgb = Image.new("RGB", (8, 8), (200, 30, 90))
        if mode == "I;16":
            img = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
        else:
            img = rgb.convert(mode)
        out = to_rgb(img, "x.png")
        assert out.mode == "RGB" and out.size == (8, 8)

    def test_transparent_is_white(self):
        img = Image.new("RGBA", (4, 4), (10, 10, 10, 0))
        assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)

    def test_sixteen_bit_uses_full_range(self):
        arr = np.array([[0, 65535]], dtype=np.uint16)
        out = np.asarray(to_rgb(Image.fromarray(arr)))
        assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


class TestFolderTiles:
    def test_reads_classes_and_tiles(self, tmp_path):
        _save(tmp_path / "a" / "one.png", Image.new("RGB", (64, 64), (255, 0, 0)))
        _save(tmp_path / "a" / "big.tif", Image.new("L", (130, 70), 100))
        _save(tmp_path / "b" / "two.jpg", Image.new("RGB", (64, 64), (0, 0, 255)))
        _save(tmp_path / "b" / "three.PNG", Image.new("RGBA", (64, 64), (0, 0, 255, 128)))
        (tmp_path / "b" / "notes.txt").write_text("not an image")
        tiles = folder_tiles(tmp_path, tile_size=64)
        assert tiles.classes == ("a", "b")
        assert tiles.counts() == {"a": 1 + 2, "b": 2}
        assert tiles.images.shape == (5, 3, 64, 64)

    def test_corrupt_file_named(self, tmp_path):
        _save(tmp_path / "a" / "ok.png", Image.new("RGB", (64, 64)))
        (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        with pytest.raises(ValueError, match="broken.png: not a readable image"):
            folder_tiles(tmp_path)

    def test_empty_file_named(self, tmp_path):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "empty.jpg").write_bytes(b"")
        with pytest.raises(ValueError, match="empty.jpg: the file is empty"):
            folder_tiles(tmp_path)

    def test_too_small_named(self, tmp_path):
        _save(tmp_path / "a" / "small.png", Image.new("RGB", (40, 80)))
        with pytest.raises(ValueError, match="small.png: image is 40x80 pixels, smaller than the tile size 64"):
            folder_tiles(tmp_path, tile_size=64)

    def test_class_without_images(self, tmp_path):
        _save(tmp_path / "a" / "ok.png", Image.new("RGB", (64, 64)))
        (tmp_path / "b").mkdir()
        with pytest.raises(ValueError, match=r"class folder .*b holds no image"):
            folder_tiles(tmp_path)

    def test_no_class_folders(self, tmp_path):
        with pytest.raises(ValueError, match="has no class sub-folders"):
            folder_tiles(tmp_path)
        with pytest.raises(FileNotFoundError, match="data folder not found"):
            folder_tiles(tmp_path / "nope")

    def test_load_rgb_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="image not found"):
            load_rgb(tmp_path / "x.png")


class TestSourceTiles:
    """``source_tiles`` reads only the pair's classes and size, so a stand-in pair is enough."""

    PAIR = SimpleNamespace(classes=("stroma", "tumour"), image_size=32)

    def test_demo_tiles_of_the_source_class(self):
        images, names = source_tiles("hgsc", self.PAIR, split="test")
        expected = hgsc_tiles("test", TileSpec(tile_size=32, stride=16)).of_class("stroma")
        assert torch.equal(images, expected.images) and names == list(expected.sources)

    def test_folder_of_images(self, class_folders):
        images, names = source_tiles(str(class_folders / "normal"), self.PAIR)
        assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8 and len(names) == 3

    def test_pair_of_other_classes_needs_a_folder(self):
        with pytest.raises(ValueError, match="is not a demo class .*; pass --source DIR"):
            source_tiles("hgsc", SimpleNamespace(classes=("normal", "tumour"), image_size=32))
