"""The prepared-dataset contract shared by `prep` (writer) and the loaders (reader).

Layout of a dataset folder::

    dataset.json                      format, version, classes, counts, ...
    splits/{train,val,test}.csv       header `index,object,class,label,path`; `index` = row number
    images/<class>/<object>/vVV.<ext> the 12 views of one object, VV = 00..11

`path` is the object's folder relative to the dataset root, so any two of the 12 views can be
chosen at training time without running prep again.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from loaders.errors import UserError

FORMAT = "mmtm-dataset"
VERSION = 1
NUM_VIEWS = 12
SPLITS = ("train", "val", "test")
ENCODINGS = {"jpeg": "jpg", "png": "png"}
FIELDS = ("index", "object", "class", "label", "path")


class DatasetError(UserError):
    """A dataset folder that breaks the contract; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Row:
    index: int
    object: str
    cls: str
    label: int
    path: str


def view_filename(view: int, encoding: str) -> str:
    return f"v{view:02d}.{ENCODINGS[encoding]}"


@dataclass(frozen=True)
class PreparedDataset:
    root: Path
    meta: dict

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def encoding(self) -> str:
        return self.meta["encoding"]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def rows(self, split: str) -> list[Row]:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        path = self.root / "splits" / f"{split}.csv"
        if not path.is_file():
            raise DatasetError(f"{path}: split index file is missing; re-run `mmtm prep`")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != FIELDS:
                raise DatasetError(f"{path}: header must be {','.join(FIELDS)}")
            rows = [Row(int(r["index"]), r["object"], r["class"], int(r["label"]), r["path"]) for r in reader]
        for i, r in enumerate(rows):
            if r.index != i:
                raise DatasetError(f"{path}: row {i} has index {r.index}; indices must be 0..n-1 in order")
        return rows

    def view_path(self, row: Row, view: int) -> Path:
        check_view(view)
        return self.root / row.path / view_filename(view, self.encoding)


def check_view(view: int) -> None:
    if not 0 <= int(view) < NUM_VIEWS:
        raise DatasetError(f"view index {view} is out of range; views are 0..{NUM_VIEWS - 1}")


def open_dataset(root: str | os.PathLike) -> PreparedDataset:
    """Read and check `dataset.json`; raise DatasetError with one clear line otherwise."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: not a prepared dataset (no dataset.json); run `mmtm prep` first")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e.msg})") from None
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DatasetError(
            f"{meta_path}: dataset version {meta.get('version')!r} is not supported (expected {VERSION}); "
            "re-run `mmtm prep`"
        )
    if meta.get("encoding") not in ENCODINGS:
        raise DatasetError(f"{meta_path}: unknown encoding {meta.get('encoding')!r}")
    return PreparedDataset(root, meta)


def write_split(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow((r.index, r.object, r.cls, r.label, r.path))


def write_meta(root: Path, *, classes: list[str], image_size: int, encoding: str, source: str,
               counts: dict[str, int], val_fraction: float, split_seed: int, **extra) -> None:
    meta = {
        "format": FORMAT, "version": VERSION, "classes": list(classes), "num_views": NUM_VIEWS,
        "image_size": int(image_size), "encoding": encoding, "source": source,
        "counts": {s: int(counts[s]) for s in SPLITS}, "val_fraction": float(val_fraction),
        "split_seed": int(split_seed), **extra,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
