"""`mmtm prep pairs`: a CSV of two images and a label per object becomes a dataset folder with two views per object
that the loaders read; splits from a column or a seeded per-class draw; --skip-bad drops undecodable objects.
(Its bad inputs are in tests/test_bad_input.py.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import invoke
from mmtm.loaders.dataset import open_dataset

CLASSES = ("ant", "bee", "cow")


def make_pairs(root, per_class=10, split=None, names=False, sizes=((20, 12), (12, 12))):
    """Per object k of class c: view0 a flat colour (10c, 8k, 50) of size sizes[0] (PNG), view1 a flat grey 8k + 40c
    of size sizes[1] (JPEG), in folders of their own; objects.csv lists them, with split(k) and names if asked."""
    (root / "front").mkdir(parents=True)
    (root / "back").mkdir()
    header = "label,view1,view0" + (",split" if split else "") + (",object" if names else "")
    lines = [header]
    for c, cls in enumerate(CLASSES):
        for k in range(per_class):
            Image.new("RGB", sizes[0], (10 * c, 8 * k, 50)).save(root / "front" / f"{cls}{k}.png")
            Image.new("L", sizes[1], 8 * k + 40 * c).save(root / "back" / f"{cls}{k}.jpg", quality=100)
            lines.append(f"{cls},back/{cls}{k}.jpg,{root / 'front' / f'{cls}{k}.png'}"
                         + (f",{split(k)}" if split else "") + (f",{cls}-{k}" if names else ""))
    (root / "objects.csv").write_text("\n".join(lines) + "\n")
    return root / "objects.csv"


def prep(csv, out, *extra):
    r = invoke("prep", "pairs", csv, "--out", out, "--image-size", 16, "--workers", 1, "--quiet", *extra)
    assert r.exit_code == 0, r.output
    return r


def splits_of(data) -> dict[str, list[str]]:
    ds = open_dataset(data)
    return {s: [r.object for r in ds.rows(s)] for s in ("train", "val", "test")}


def test_pairs_become_a_two_view_dataset_the_contract_accepts(tmp_path):
    csv = make_pairs(tmp_path / "src")
    r = prep(csv, tmp_path / "d")
    assert "views (0 and 1, the folder's default)" in r.output
    ds = open_dataset(tmp_path / "d")
    assert ds.default_views == (0, 1)  # a run on the folder needs no --views
    meta = ds.meta
    assert meta["num_views"] == 2 and meta["source"] == "pairs" and meta["classes"] == list(CLASSES)
    assert meta["pairs"] == {"split": "seeded", "test_fraction": 0.2}
    # per class of 10: round(0.2·10) = 2 test, round(0.2·8) = 2 val, 6 train
    assert meta["counts"] == {"train": 18, "val": 6, "test": 6}
    for split in ("train", "val", "test"):
        for row in ds.rows(split):
            folder = tmp_path / "d" / row.path
            assert sorted(p.name for p in folder.iterdir()) == ["v00.jpg", "v01.jpg"]
            c, k = CLASSES.index(row.cls), int(row.object.removeprefix("row")) - 1 - 10 * CLASSES.index(row.cls)
            front = np.asarray(Image.open(ds.view_path(row, 0)).convert("RGB"), dtype=float)
            back = np.asarray(Image.open(ds.view_path(row, 1)).convert("L"), dtype=float)
            assert front.shape == (16, 16, 3) and back.shape == (16, 16)  # resized to --image-size
            assert np.abs(front - (10 * c, 8 * k, 50)).max() <= 3  # view0 is the view0 column's image
            assert np.abs(back - (8 * k + 40 * c)).max() <= 3


def test_the_seeded_split_is_per_class_and_follows_the_seed(tmp_path):
    csv = make_pairs(tmp_path / "src")
    prep(csv, tmp_path / "a")
    prep(csv, tmp_path / "b")
    prep(csv, tmp_path / "c", "--seed", 11, "--test-fraction", 0.3, "--val-fraction", 0.5)
    a, b, c = (splits_of(tmp_path / n) for n in "abc")
    assert a == b and a != c
    rows = {s: open_dataset(tmp_path / "c").rows(s) for s in ("train", "val", "test")}
    for cls in CLASSES:  # per class: round(0.3·10) = 3 test, round(0.5·7) = 4 val (round half to even), 3 train
        assert [sum(r.cls == cls for r in rows[s]) for s in ("train", "val", "test")] == [3, 4, 3]


def test_a_split_column_and_names_are_kept_as_written(tmp_path):
    csv = make_pairs(tmp_path / "src", split=lambda k: ("train", "train", "val", "test")[k % 4], names=True)
    prep(csv, tmp_path / "d")
    got = splits_of(tmp_path / "d")
    for split, ks in (("train", [0, 1, 4, 5, 8, 9]), ("val", [2, 6]), ("test", [3, 7])):
        assert got[split] == [f"{cls}-{k}" for cls in CLASSES for k in ks]
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["pairs"] == {"split": "column"} and meta["val_fraction"] == pytest.approx(6 / 24)


def test_skip_bad_drops_an_object_whose_image_does_not_decode(tmp_path):
    csv = make_pairs(tmp_path / "src")
    bad = tmp_path / "src" / "back" / "bee3.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    r = prep(csv, tmp_path / "d", "--skip-bad")
    assert "skipped:" in r.output and "bee3.jpg" in r.output and "1 skipped" in r.output
    assert "row000014" not in sum(splits_of(tmp_path / "d").values(), [])
    assert sum(open_dataset(tmp_path / "d").meta["counts"].values()) == 29


def test_workers_write_what_one_process_writes(tmp_path):
    csv = make_pairs(tmp_path / "src", per_class=5)
    prep(csv, tmp_path / "one")
    prep(csv, tmp_path / "two", "--workers", 2)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "images").rglob("*.jpg"))
    assert one and one == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "images").rglob("*.jpg"))
    assert all((tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes() for p in one)
