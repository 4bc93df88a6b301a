"""The prepared-dataset contract shared by `prep` (writer) and the loaders (reader).

Layout of a dataset folder::

    dataset.json                      format, version, classes, counts, ...
    splits/{train,val,test}.csv       header `index,object,class,label,path`; `index` = row number
    images/<class>/<object>/vVV.<ext> the views of one object, VV = 00..num_views-1

`path` is the object's folder relative to the dataset root, so any two of the views can be
chosen at training time without running prep again. dataset.json says how many views an object has
(`num_views`; 12, ModelNet40's, where a folder does not say), which two a run uses unless told
(`default_views`; 0 and 6 for 12 views, 0 and 1 for two) and which augmentations the images allow
(`augmentations`; a horizontal flip, the paper's, where a folder does not say: a mirrored digit is another
glyph, so a digits set allows none).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mmtm.loaders.errors import UserError

FORMAT = "mmtm-dataset"
VERSION = 1
NUM_VIEWS = 12            # ModelNet40's MVCNN views: what renders and meshes give, and old folders have
AUGMENTATIONS = ("hflip",)  # what `augmentations` may name; hflip = random horizontal flip per view in training
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

    @property
    def num_views(self) -> int:
        return int(self.meta.get("num_views", NUM_VIEWS))

    @property
    def default_views(self) -> tuple[int, int]:
        """The views a run uses unless told: dataset.json's `default_views`, else 0 and 6 (the paper's front and
        rear) for 12 views, else 0 and 1."""
        views = self.meta.get("default_views")
        if views is not None:
            return int(views[0]), int(views[1])
        return (0, 6) if self.num_views == NUM_VIEWS else (0, 1)

    @property
    def flips(self) -> bool:
        """Whether training mirrors views at random (the augmentation `hflip`)."""
        return "hflip" in self.meta.get("augmentations", AUGMENTATIONS)

    def check_view(self, view: int) -> None:
        check_view(view, self.num_views)

    def rows(self, split: str) -> list[Row]:
        """The split's rows, checked: integer index 0..n-1 in order, a label of one of the classes whose name is
        the row's class, a path that resolves inside the dataset folder (a `..` or absolute path would read another
        dataset), and an object that no other row of the three split files names (a repeat would be counted twice,
        and an object in two splits would be tested on what it was trained on)."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        path = self._split_path(split)
        inside = self.root.resolve()
        rows = [self._row(path, i, r, inside) for i, r in enumerate(self._records(path))]
        seen: dict[str, int] = {}
        for row in rows:
            first = seen.setdefault(row.object, row.index)
            if first != row.index and rows[first].label != row.label:
                raise DatasetError(f"{path}: row {row.index} has object {row.object!r} under label {row.label}, row "
                                   f"{first} under label {rows[first].label}; an object has one label")
            if first != row.index:
                raise DatasetError(f"{path}: row {row.index} repeats object {row.object!r} of row {first}; "
                                   "an object has one row")
        for other in SPLITS:
            if other != split:
                other_path = self._split_path(other)
                for j, record in enumerate(self._records(other_path)):
                    if record["object"] in seen:
                        raise DatasetError(f"{path}: row {seen[record['object']]} has object {record['object']!r}, "
                                           f"which row {j} of {other_path} also has; an object belongs to one split")
        return rows

    def _split_path(self, split: str) -> Path:
        path = self.root / "splits" / f"{split}.csv"
        if not path.is_file():
            raise DatasetError(f"{path}: split index file is missing; re-run `mmtm prep`")
        return path

    @staticmethod
    def _records(path: Path) -> list[dict]:
        """The split file's rows as read, under a checked header."""
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != FIELDS:
                    raise DatasetError(f"{path}: header must be {','.join(FIELDS)}")
                return list(reader)
        except OSError as e:
            raise DatasetError(f"{path}: cannot read the split index file ({e.strerror})") from None

    def _row(self, path: Path, i: int, fields: dict, inside: Path) -> Row:
        if None in fields or None in fields.values():  # DictReader's marks of too many or too few fields
            raise DatasetError(f"{path}: row {i} does not have the {len(FIELDS)} fields {','.join(FIELDS)}")
        try:
            index, label = int(fields["index"]), int(fields["label"])
        except ValueError:
            raise DatasetError(f"{path}: row {i} has index {fields['index']!r} and label {fields['label']!r}; "
                               "both must be integers") from None
        if index != i:
            raise DatasetError(f"{path}: row {i} has index {index}; indices must be 0..n-1 in order")
        classes = self.meta["classes"]
        if not 0 <= label < len(classes):
            raise DatasetError(f"{path}: row {i} has label {label}; labels are 0..{len(classes) - 1} "
                               f"({len(classes)} classes in dataset.json)")
        if fields["class"] != classes[label]:
            raise DatasetError(f"{path}: row {i} has class {fields['class']!r} and label {label}, which is "
                               f"{classes[label]!r} in dataset.json's classes")
        if not (self.root / fields["path"]).resolve().is_relative_to(inside):
            raise DatasetError(f"{path}: row {i} has path {fields['path']!r}, which leads outside the dataset "
                               f"folder {self.root}")
        return Row(index, fields["object"], fields["class"], label, fields["path"])

    def view_path(self, row: Row, view: int) -> Path:
        self.check_view(view)
        return self.root / row.path / view_filename(view, self.encoding)


def check_view(view: int, num_views: int) -> None:
    if not 0 <= int(view) < num_views:
        raise DatasetError(f"view index {view} is out of range; this dataset's views are 0..{num_views - 1}")


def data_digest(root: str | os.PathLike) -> str:
    """`sha256:<hex>` over dataset.json and the three split files (each file's name, length and bytes, in one
    order): what says which objects, classes and labels a run trains and is tested on. Runs that record one digest
    used the same data, so a comparison can refuse to mix runs of two datasets. The images are not read: hashing
    every view of ModelNet40 would take minutes per run, and prep writes them together with these files (a dataset
    whose images were edited in place keeps its digest)."""
    root = Path(root)
    h = hashlib.sha256()
    for name in ("dataset.json", *(f"splits/{s}.csv" for s in SPLITS)):
        try:
            data = (root / name).read_bytes()
        except OSError as e:
            raise DatasetError(f"{root / name}: cannot be read for the data digest ({e.strerror}); re-run "
                               "`mmtm prep`") from None
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return f"sha256:{h.hexdigest()}"


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
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{meta_path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: must hold a JSON object, not {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DatasetError(
            f"{meta_path}: dataset version {meta.get('version')!r} is not supported (expected {VERSION}); "
            "re-run `mmtm prep`"
        )
    if meta.get("encoding") not in ENCODINGS:
        raise DatasetError(f"{meta_path}: unknown encoding {meta.get('encoding')!r}")
    _check_meta(meta_path, meta)
    return PreparedDataset(root, meta)


def _check_meta(meta_path: Path, meta: dict) -> None:
    """The keys readers use have the types `write_meta` gives them; one line naming the key otherwise."""
    classes, size, counts = meta.get("classes"), meta.get("image_size"), meta.get("counts")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        raise DatasetError(f"{meta_path}: 'classes' must be a list of distinct class names, not {classes!r}")
    if not (_whole(size) and size > 0):
        raise DatasetError(f"{meta_path}: 'image_size' must be a positive whole number of pixels, not {size!r}")
    if not (isinstance(counts, dict) and all(_whole(counts.get(s)) and counts[s] >= 0 for s in SPLITS)):
        raise DatasetError(f"{meta_path}: 'counts' must give the number of objects of each split "
                           f"({', '.join(SPLITS)}), not {counts!r}")
    views = meta.get("num_views", NUM_VIEWS)
    if not (_whole(views) and views >= 2):
        raise DatasetError(f"{meta_path}: 'num_views' must be a whole number of views, at least 2, not {views!r}")
    default = meta.get("default_views")
    if default is not None and not (isinstance(default, list) and len(default) == 2 and all(map(_whole, default))
                                    and default[0] != default[1] and all(0 <= v < views for v in default)):
        raise DatasetError(f"{meta_path}: 'default_views' must be two different view indices 0..{views - 1}, "
                           f"not {default!r}")
    augmentations = meta.get("augmentations", list(AUGMENTATIONS))
    if not (isinstance(augmentations, list) and all(a in AUGMENTATIONS for a in augmentations)):
        raise DatasetError(f"{meta_path}: 'augmentations' must be a list of {', '.join(AUGMENTATIONS)}, "
                           f"not {augmentations!r}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def write_split(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow((r.index, r.object, r.cls, r.label, r.path))


def write_meta(root: Path, *, classes: list[str], image_size: int, encoding: str, source: str,
               counts: dict[str, int], val_fraction: float, split_seed: int, num_views: int = NUM_VIEWS,
               augmentations: tuple[str, ...] = AUGMENTATIONS, **extra) -> None:
    meta = {
        "format": FORMAT, "version": VERSION, "classes": list(classes), "num_views": int(num_views),
        "augmentations": list(augmentations), "image_size": int(image_size), "encoding": encoding, "source": source,
        "counts": {s: int(counts[s]) for s in SPLITS}, "val_fraction": float(val_fraction),
        "split_seed": int(split_seed), **extra,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
