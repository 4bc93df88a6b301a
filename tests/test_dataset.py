"""The split files are checked against dataset.json and against each other when a split is read."""
from __future__ import annotations

import csv

import pytest

from mmtm.loaders.dataset import SPLITS, DatasetError, open_dataset


def edit(data, split: str, row: int, **cells) -> None:
    """Set cells (by field name) of one row of a split file; row 0 is the first row after the header."""
    path = data / "splits" / f"{split}.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row].update(cells)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def cell(data, split: str, row: int, field: str) -> str:
    with (data / "splits" / f"{split}.csv").open(newline="") as f:
        return list(csv.DictReader(f))[row][field]


@pytest.fixture
def data(make_dataset, tmp_path):
    """3 classes c0, c1, c2; row i of a split has label i % 3."""
    return make_dataset(tmp_path)


def test_the_fixture_and_prep_datasets_pass(data, synthetic_data):
    for root in (data, synthetic_data):
        ds = open_dataset(root)
        rows = [r for split in SPLITS for r in ds.rows(split)]
        assert rows and all(r.cls == ds.classes[r.label] for r in rows)
        assert len({r.object for r in rows}) == len(rows)


def test_a_class_that_is_not_its_labels_is_named(data):
    edit(data, "train", 1, **{"class": "c2"})  # label 1 is c1
    with pytest.raises(DatasetError) as err:
        open_dataset(data).rows("train")
    assert str(err.value) == (f"{data}/splits/train.csv: row 1 has class 'c2' and label 1, which is 'c1' in "
                              "dataset.json's classes")


def test_a_label_outside_the_classes_is_named(data):
    edit(data, "val", 2, label="3")
    with pytest.raises(DatasetError, match=r"val\.csv: row 2 has label 3; labels are 0\.\.2"):
        open_dataset(data).rows("val")


def test_an_object_under_two_labels_is_named(data):
    edit(data, "train", 4, object=cell(data, "train", 0, "object"))  # row 4 is c1, row 0 c0
    with pytest.raises(DatasetError) as err:
        open_dataset(data).rows("train")
    assert str(err.value) == (f"{data}/splits/train.csv: row 4 has object 'c0_0000' under label 1, row 0 under "
                              "label 0; an object has one label")


def test_an_object_repeated_in_a_split_is_named(data):
    edit(data, "test", 3, object=cell(data, "test", 0, "object"))  # both c0
    with pytest.raises(DatasetError, match=r"test\.csv: row 3 repeats object '\w+' of row 0; an object has one row"):
        open_dataset(data).rows("test")


def test_an_object_in_two_splits_is_named_with_both_files(data):
    edit(data, "val", 0, object=cell(data, "train", 3, "object"))  # both c0: each row agrees with itself
    ds = open_dataset(data)
    train, val = data / "splits" / "train.csv", data / "splits" / "val.csv"
    with pytest.raises(DatasetError) as err:
        ds.rows("train")
    assert str(err.value) == (f"{train}: row 3 has object 'c0_0003', which row 0 of {val} also has; an object "
                              "belongs to one split")
    with pytest.raises(DatasetError) as err:
        ds.rows("val")
    assert str(err.value).startswith(f"{val}: row 0 has object 'c0_0003', which row 3 of {train} also has")
    ds.rows("test")  # the third split shares no object


def test_a_missing_split_file_is_named_when_any_split_is_read(data):
    (data / "splits" / "test.csv").unlink()
    with pytest.raises(DatasetError, match=r"test\.csv: split index file is missing"):
        open_dataset(data).rows("train")


def test_the_data_digest_follows_dataset_json_and_the_split_files_not_the_images(data, tmp_path):
    import json
    import shutil

    from mmtm.loaders.dataset import data_digest

    digest = data_digest(data)
    assert digest.startswith("sha256:") and data_digest(shutil.copytree(data, tmp_path / "copy")) == digest
    image = next((data / "images").rglob("v00.*"))
    image.write_bytes(b"not read")
    assert data_digest(data) == digest  # images are not hashed (too slow), as the docstring says
    edit(data, "test", 0, object="renamed")
    assert data_digest(data) != digest
    meta = json.loads((tmp_path / "copy" / "dataset.json").read_text())
    (tmp_path / "copy" / "dataset.json").write_text(json.dumps({**meta, "split_seed": 1}))
    assert data_digest(tmp_path / "copy") not in (digest, data_digest(data))
    (tmp_path / "copy" / "splits" / "val.csv").unlink()
    with pytest.raises(DatasetError, match="val.csv"):
        data_digest(tmp_path / "copy")
