"""Fault injection on precomputed sets (issue 22): a cache is something users download and share, so
``from_cache`` opens only the cache's own files, and every broken or hostile ``labels.csv`` ends in one
clear error naming the file and the row; precompute's resume copes with what a crash or a user leaves.

Each test failed before the fix (docs/reliability.md lists them).
"""

import csv
import io
import json
import shutil

import pytest
import torch
from PIL import Image

from progaug.cache import CSV_FIELDS, ProgressiveCache
from progaug.datasets import SoftLabelProgressiveDataset
from progaug.fileio import sha256_file
from progaug.precomputation import PrecomputeConfig

from conftest import make_pair_dir
from test_precompute import files, run as precompute_run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One finished cache (12 samples of a tiny pair), made once; each test works on a copy."""
    root = tmp_path_factory.mktemp("made")
    pair = make_pair_dir(root / "pair")
    return pair, precompute_run(pair, root / "cache")


@pytest.fixture
def cache(made, tmp_path):
    return shutil.copytree(made[1], tmp_path / "cache")


def edit_labels(out, edit):
    """Rewrite ``labels.csv`` through ``edit(rows) -> (fieldnames, rows)`` and record its new sha256 in the
    manifest, as a careful forger would (only labels.csv's hash updated)."""
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fields, rows = edit(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    (out / "labels.csv").write_text(buf.getvalue())
    edit_manifest(out, lambda m: m["files"].__setitem__("labels.csv", sha256_file(out / "labels.csv")))


def edit_manifest(out, edit):
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def set_row(index, **values):
    def edit(rows):
        rows[index].update(values)
        return list(CSV_FIELDS), rows
    return edit


def secret_png(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    return path


# ------------------------------------------------------------------ only the cache's own files


class TestTrustBoundary:
    @pytest.mark.parametrize("name", ["../secret.png", "{abs}", "images/../../secret.png", "labels.csv"])
    def test_row_pointing_elsewhere_is_refused(self, cache, tmp_path, name):
        name = name.format(abs=secret_png(tmp_path))
        edit_labels(cache, set_row(0, file=name))
        with pytest.raises(ValueError, match=rf"labels.csv: row 1: file '{name}' is not an image the manifest lists"):
            SoftLabelProgressiveDataset.from_cache(cache)

    def test_unreadable_outside_file_is_refused_before_it_is_read(self, cache):
        edit_labels(cache, set_row(0, file="/etc/passwd"))
        with pytest.raises(ValueError, match=r"row 1: file '/etc/passwd' is not an image the manifest lists"):
            ProgressiveCache.open(cache, verify=False)

    def test_manifest_listing_an_outside_name_is_refused(self, cache, tmp_path):
        secret = secret_png(tmp_path)
        edit_labels(cache, set_row(0, file="../secret.png"))
        edit_manifest(cache, lambda m: m["files"].__setitem__("../secret.png", sha256_file(secret)))
        with pytest.raises(ValueError, match=r"manifest.json lists '../secret.png', which is not a file of a progaug cache"):
            ProgressiveCache.open(cache)

    def test_image_replaced_by_a_symlink_is_refused(self, cache, tmp_path):
        outside = tmp_path / "outside.png"
        shutil.copy(cache / "images" / "000000.png", outside)  # same bytes: the sha256 still matches
        (cache / "images" / "000000.png").unlink()
        (cache / "images" / "000000.png").symlink_to(outside)
        with pytest.raises(ValueError, match=r"000000.png is a symbolic link; a cache is only read from its own files"):
            SoftLabelProgressiveDataset.from_cache(cache)

    def test_images_folder_that_is_a_symlink_is_refused(self, cache, tmp_path):
        shutil.move(cache / "images", tmp_path / "elsewhere")
        (cache / "images").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(ValueError, match=r"images is a symbolic link"):
            ProgressiveCache.open(cache, verify=False)

    def test_labels_csv_that_is_a_symlink_is_refused(self, cache, tmp_path):
        shutil.move(cache / "labels.csv", tmp_path / "labels.csv")
        (cache / "labels.csv").symlink_to(tmp_path / "labels.csv")
        with pytest.raises(ValueError, match=r"labels.csv is a symbolic link"):
            ProgressiveCache.open(cache)

    def test_an_intact_cache_still_opens(self, cache):
        ds = SoftLabelProgressiveDataset.from_cache(cache)
        assert len(ds) == 12 and ds[0][0].shape == (3, 32, 32)


# ---------------------------------------------------------------------------- labels.csv rows


BAD_ROWS = [
    *[(4, {"soft_label": v}, rf"row 5: soft_label must be a finite number in \[0, 1\], got '{v}'") for v in ("1.5", "nan", "-0.1", "inf")],
    (2, {"depth": "deep"}, r"row 3: column 'depth' must be a number, got 'deep'"),
    (0, {"level": ""}, r"row 1: column 'level' must be a number, got ''"),
]


class TestLabelsCsv:
    @pytest.mark.parametrize("row,values,match", BAD_ROWS)
    def test_bad_value_is_named_with_its_row(self, cache, row, values, match):
        edit_labels(cache, set_row(row, **values))
        with pytest.raises(ValueError, match="labels.csv: " + match):
            SoftLabelProgressiveDataset.from_cache(cache)

    def test_missing_file_column_is_named(self, cache):
        edit_labels(cache, lambda rows: ([c for c in CSV_FIELDS if c != "file"], rows))
        with pytest.raises(ValueError, match=r"labels.csv lacks the column\(s\) \['file'\]"):
            ProgressiveCache.open(cache)

    def test_no_rows_is_named(self, cache):
        edit_labels(cache, lambda rows: (list(CSV_FIELDS), []))
        edit_manifest(cache, lambda m: m.update(samples=0))
        with pytest.raises(ValueError, match=r"labels.csv has no rows"):
            SoftLabelProgressiveDataset.from_cache(cache)

    def test_a_cache_of_one_class_is_refused(self, cache):
        edit_manifest(cache, lambda m: m["settings"].update(classes=["stroma", "stroma"]))
        with pytest.raises(ValueError, match=r"settings.classes must be two different class names, got \['stroma', 'stroma'\]"):
            SoftLabelProgressiveDataset.from_cache(cache)


class TestRealImages:
    def test_float_images_in_0_255_are_refused(self, cache):
        real = [(torch.full((3, 32, 32), 200.0), 0), (torch.full((3, 32, 32), 0.5), 1)]
        with pytest.raises(ValueError, match=r"`real` image 0 is floating point but not in \[0, 1\] \(max 200\)"):
            SoftLabelProgressiveDataset.from_cache(cache, real, classes=["stroma", "tumour"])

    def test_uint8_and_unit_float_images_are_taken(self, cache):
        real = [(torch.full((3, 32, 32), 200, dtype=torch.uint8), 0), (torch.full((3, 32, 32), 0.5), 1)]
        ds = SoftLabelProgressiveDataset.from_cache(cache, real, classes=["stroma", "tumour"], replace_prob=None)
        assert len(ds) == 14 and ds[12][0].max() == pytest.approx(200 / 255)


# ------------------------------------------------------------------ precompute: what a crash leaves


class TestPrecomputeResume:
    def test_temporary_files_of_a_killed_run_are_removed(self, made, cache):
        (cache / "manifest.json").unlink()  # killed before the end
        left = [cache / "images" / ".000001.png.k2j4h5g6.tmp", cache / "records" / ".000000.json.a1b2c3d4.tmp",
                cache / ".labels.csv.zz99yy88.tmp"]
        for path in left:
            path.write_bytes(b"half")
        precompute_run(made[0], cache, resume=True)
        assert not [p for p in left if p.exists()] and not list(cache.rglob("*.tmp"))
        ProgressiveCache.open(cache)

    def test_corrupt_run_json_is_read_from_the_manifest(self, made, cache, capsys):
        images = files(cache)
        (cache / "run.json").write_text('{"config": ')
        precompute_run(made[0], cache, resume=True)
        assert "run.json is not valid JSON" in capsys.readouterr().err
        assert files(cache) == images and json.loads((cache / "run.json").read_text())["n_sources"] == 3

    def test_corrupt_run_json_without_a_manifest_is_named(self, made, cache):
        (cache / "manifest.json").unlink()
        (cache / "run.json").write_bytes(b"")
        with pytest.raises(ValueError, match=r"run.json is not valid JSON .*this folder cannot be resumed"):
            precompute_run(made[0], cache, resume=True)

    def test_source_folder_spelled_otherwise_keeps_every_group(self, made, class_folders, tmp_path, monkeypatch, capsys):
        from progaug.data.sources import source_tiles
        from progaug.hub import load_pair
        from progaug.precomputation import precompute

        pair, config = load_pair(made[0]), PrecomputeConfig(n=6, num_levels=3, steps=6, max_batch=4)
        monkeypatch.chdir(class_folders.parent)
        spellings = ["data/normal", str(class_folders / "normal"), "./data/normal/", f"../{tmp_path.name}/data/normal"]
        runs = [source_tiles(s, pair) for s in spellings]
        assert all(names == runs[0][1] for _, names in runs) and runs[0][1][0] == "0.png:0,0"
        out = precompute(pair, *runs[0], tmp_path / "c", config, progress=False)
        labels = (out / "labels.csv").read_bytes()
        (out / "manifest.json").unlink()
        precompute(pair, *runs[1], out, config, resume=True, progress=False)
        assert "generated again" not in capsys.readouterr().err and (out / "labels.csv").read_bytes() == labels

    def test_too_many_samples_are_refused_before_anything_is_allocated(self):
        with pytest.raises(ValueError, match=r"`n` must be in \[1, 10000000\], got 1000000000"):
            PrecomputeConfig(n=1_000_000_000)

    def test_empty_source_is_refused(self, made):
        from progaug.data.sources import source_tiles
        from progaug.hub import load_pair

        with pytest.raises(ValueError, match=r"--source must be 'hgsc' or a folder of source-class images, got ''"):
            source_tiles("", load_pair(made[0]))
