"""`mmtm prep pairs CSV`: any two-modality image data, given as a CSV with one object per row, into a dataset folder
with two views per object (`num_views: 2` in dataset.json, so runs use views 0 and 1 by default).

The CSV (docs/data.md): a header naming the columns, in any order,

    view0, view1   the object's two images: paths relative to the CSV's folder, or absolute
    label          its class name (also a folder name: no `/`, `\\`, leading `.` or surrounding spaces)
    split          optional: train | val | test for every row; without it a seeded, per-class draw makes the
                   splits (--test-fraction of each class for test, --val-fraction of the rest for validation)
    object         optional: the object's name (a folder name, unique); default `row<N>`, N = the data row

Everything the CSV says is checked before anything is written: columns, labels, splits, names, duplicate rows, an
image named twice, and that every image exists and can be opened. Every image is then decoded completely, so a
truncated or corrupt file fails here (or, with --skip-bad, drops its object), never in the middle of training: the
DALI decoder cannot skip a bad file. Images are brought to image_size² (LANCZOS, aspect ratio not kept) and
re-encoded; the folder is built under a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import csv
import functools
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmtm.loaders.atomic import AtomicDir
from mmtm.loaders.dataset import SPLITS, DatasetError, Row, view_filename, write_meta, write_split
from mmtm.loaders.errors import UserError
from mmtm.loaders.prep.build import _check_options, _check_out
from mmtm.loaders.prep.mvcnn_tree import load_view
from mmtm.loaders.prep.render import encode

PAIRS = "pairs"
NUM_PAIR_VIEWS = 2
COLUMNS = ("view0", "view1", "label")
OPTIONAL_COLUMNS = ("split", "object")
STRIPPED = ("view0", "view1", "split")  # names (label, object) are checked as written
DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class PairObject:
    line: int                  # line of the CSV, for messages
    name: str
    cls: str
    split: str | None          # from the split column; None until the seeded draw
    files: tuple[Path, Path]   # view0, view1


def read_pairs(csv_path: str | os.PathLike) -> tuple[list[PairObject], bool]:
    """The CSV's objects, every field checked, and whether it has a split column; a UserError names the line."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such CSV file")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            records = [(reader.line_num, r) for r in reader if any(field.strip() for field in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: cannot read the CSV ({getattr(e, 'strerror', None) or e})") from None
    if header is None:
        raise UserError(f"{csv_path}: the CSV is empty; it needs a header ({','.join(COLUMNS)}[,split][,object]) "
                        "and one row per object")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in COLUMNS + OPTIONAL_COLUMNS]
    missing = [c for c in COLUMNS if c not in header]
    if unknown or missing or len(set(header)) != len(header):
        raise UserError(f"{csv_path}: header {','.join(header)!r} must name the columns {', '.join(COLUMNS)} and "
                        f"optionally {', '.join(OPTIONAL_COLUMNS)}, each once"
                        + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    if not records:
        raise UserError(f"{csv_path}: the CSV has a header but no objects")
    folder = csv_path.parent
    objects, names, images, pairs = [], {}, {}, {}
    for n, (line, record) in enumerate(records, start=1):
        if len(record) != len(header):
            raise UserError(f"{csv_path}: line {line} has {len(record)} fields, the header {len(header)}")
        row = {k: field.strip() if k in STRIPPED else field for k, field in zip(header, record)}
        where = f"{csv_path}: line {line}"
        cls = _folder_name(row["label"], f"{where}: label")
        name = _folder_name(row["object"], f"{where}: object") if "object" in row else f"row{n:06d}"
        if name in names:
            raise UserError(f"{where}: object {name!r} is also on line {names[name]}; names must be unique")
        names[name] = line
        split = row.get("split")
        if split is not None and split not in SPLITS:
            raise UserError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        for column in ("view0", "view1"):
            if not row[column]:
                raise UserError(f"{where}: {column} is empty; every object needs its two images")
        files = (folder / row["view0"], folder / row["view1"])
        keys = tuple(os.path.normpath(f.absolute()) for f in files)
        if keys in pairs:
            raise UserError(f"{where} repeats line {pairs[keys]} (the same two images); an object has one row")
        pairs[keys] = line
        for column, key in zip(("view0", "view1"), keys):
            if key in images:
                other_line, other_column = images[key]
                raise UserError(f"{where}: {column} {row[column]!r} is the image of {other_column} on line "
                                f"{other_line} too; each image belongs to one object and one view")
            images[key] = (line, column)
        objects.append(PairObject(line, name, cls, split, files))
    return objects, "split" in header


def _folder_name(text: str, what: str) -> str:
    """A label or object name, used as a folder name: checked, never changed."""
    if not text:
        raise UserError(f"{what} is empty")
    if text != text.strip():
        raise UserError(f"{what} {text!r} has spaces around it; write it without them")
    if "/" in text or "\\" in text or text.startswith(".") or any(ord(c) < 32 for c in text):
        raise UserError(f"{what} {text!r} cannot name a folder (no '/', '\\', control characters or leading '.')")
    return text


def check_images(objects: list[PairObject], csv_path: Path, skip_bad: bool) -> tuple[list[PairObject], list[str]]:
    """Every image exists and opens for reading; with `skip_bad` objects that fail are dropped and listed."""
    kept, problems = [], []
    for o in objects:
        problem = next((p for p in (_unopenable(f, csv_path, o.line) for f in o.files) if p), None)
        if problem is None:
            kept.append(o)
        elif skip_bad:
            problems.append(problem)
        else:
            raise DatasetError(problem)
    return kept, problems


def _unopenable(path: Path, csv_path: Path, line: int) -> str | None:
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return f"{path}: image is missing ({csv_path}, line {line})"
    except IsADirectoryError:
        return f"{path}: is a folder, not an image ({csv_path}, line {line})"
    except OSError as e:
        return f"{path}: cannot read the image ({e.strerror}; {csv_path}, line {line})"


def seeded_splits(objects: list[PairObject], test_fraction: float, val_fraction: float,
                  seed: int) -> list[PairObject]:
    """Per class, in CSV order, a seeded permutation: the first round(test_fraction·n) objects go to test, the next
    round(val_fraction·(n − n_test)) to validation, the rest to training."""
    rng = np.random.default_rng(seed)
    assigned = {}
    for cls in sorted({o.cls for o in objects}):
        members = [o for o in objects if o.cls == cls]
        n_test = int(round(test_fraction * len(members)))
        n_val = int(round(val_fraction * (len(members) - n_test)))
        for rank, i in enumerate(rng.permutation(len(members)).tolist()):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            assigned[members[i].name] = split
    return [PairObject(o.line, o.name, o.cls, assigned[o.name], o.files) for o in objects]


def check_splits(objects: list[PairObject], classes: list[str], csv_path: Path, *, where: str = "") -> None:
    """Two classes at least, every class in training, every split with objects."""
    if len(classes) < 2:
        raise UserError(f"{csv_path}: {len(classes)} class{'' if len(classes) == 1 else 'es'}{where}; "
                        "a classifier needs two at least")
    untrained = [c for c in classes if not any(o.cls == c and o.split == "train" for o in objects)]
    if untrained:
        raise UserError(f"{csv_path}: class {untrained[0]!r} has no training objects{where}"
                        + (f" (nor have {len(untrained) - 1} more)" if len(untrained) > 1 else ""))
    empty = [s for s in SPLITS if not any(o.split == s for o in objects)]
    if empty:
        raise UserError(f"{csv_path}: split {empty[0]} has no objects{where}; give it some in the split column, or "
                        "add objects or raise --val-fraction / --test-fraction for the seeded split")


def prepare_pairs(csv_path: str | os.PathLike, out: str | os.PathLike, *, image_size: int = 224,
                  encoding: str = "jpeg", val_fraction: float | None = None, test_fraction: float | None = None,
                  seed: int = 10, workers: int = 2, skip_bad: bool = False, progress: bool = True) -> dict:
    """Prepare the dataset folder `out` from the pairs CSV; returns the summary `mmtm prep` prints. With a split
    column the fractions must not be given; without one they default to 0.2 each."""
    start = time.perf_counter()
    csv_path = Path(csv_path)
    objects, has_split = read_pairs(csv_path)
    if has_split and (val_fraction is not None or test_fraction is not None):
        raise UserError(f"{csv_path}: the split column decides the splits; drop --val-fraction and --test-fraction")
    val_fraction = 0.2 if val_fraction is None else val_fraction
    test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    _check_options(image_size, encoding, val_fraction, workers)
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"--test-fraction must be in (0, 1), not {test_fraction}")
    if not has_split:
        objects = seeded_splits(objects, test_fraction, val_fraction, seed)
    classes = sorted({o.cls for o in objects})
    check_splits(objects, classes, csv_path)
    out = Path(out)
    _check_out(out, None)
    objects, skipped = check_images(objects, csv_path, skip_bad)
    if skipped:
        check_splits(objects, classes, csv_path, where=" after dropping bad objects")
    with AtomicDir(out) as root:
        failed = _write_all(root, objects, image_size, encoding, workers, progress, skip_bad)
        skipped += list(failed.values())
        kept = [o for o in objects if o.name not in failed]
        if failed:
            check_splits(kept, classes, csv_path, where=" after dropping bad objects")
        label = {c: i for i, c in enumerate(classes)}
        (root / "splits").mkdir()
        counts = {}
        for split in SPLITS:
            members = sorted((o for o in kept if o.split == split), key=lambda o: (label[o.cls], o.line))
            write_split(root / "splits" / f"{split}.csv",
                        [Row(i, o.name, o.cls, label[o.cls], f"images/{o.cls}/{o.name}")
                         for i, o in enumerate(members)])
            counts[split] = len(members)
        # num_views overrides write_meta's 12: a pairs folder holds views 0 and 1 only.
        write_meta(root, classes=classes, image_size=image_size, encoding=encoding, source=PAIRS, counts=counts,
                   val_fraction=counts["val"] / (counts["train"] + counts["val"]) if has_split else val_fraction,
                   split_seed=seed, skipped=skipped, num_views=NUM_PAIR_VIEWS,
                   source_path=str(csv_path.resolve()),
                   pairs={"split": "column" if has_split else "seeded",
                          **({} if has_split else {"test_fraction": test_fraction})})
    seconds = time.perf_counter() - start
    views = NUM_PAIR_VIEWS * len(kept)
    return {"out": str(out), "source": PAIRS, "classes": len(classes), "counts": counts, "views": views,
            "seconds": round(seconds, 2), "views_per_s": round(views / seconds, 1), "skipped": skipped}


def _write_all(root: Path, objects: list[PairObject], image_size: int, encoding: str, workers: int, progress: bool,
               skip_bad: bool) -> dict[str, str]:
    """Decode, resize, encode and write every object (in `workers` processes); {name: problem} of those dropped."""
    for cls in {o.cls for o in objects}:
        (root / "images" / cls).mkdir(parents=True)
    work = functools.partial(_write_object, root, image_size, encoding)
    workers = min(workers, len(objects))
    failed: dict[str, str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("prep pairs (objects)", total=len(objects))
        # spawn, as build.py's workers: the caller may hold torch or a GL context, which fork would copy
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(work, objects, chunksize=max(1, len(objects) // (8 * workers))) if pool else \
                map(work, objects)
            for obj, problem in zip(objects, results):
                if problem is not None:
                    if not skip_bad:
                        raise DatasetError(problem)
                    failed[obj.name] = problem
                bar.advance(task)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return failed


def _write_object(root: Path, image_size: int, encoding: str, obj: PairObject) -> str | None:
    """Both views of one object, decoded completely and written as v00 and v01; a bad image → its problem line."""
    try:
        encoded = [encode(load_view(path, image_size), encoding) for path in obj.files]
    except DatasetError as e:
        return f"{e} (line {obj.line})"
    folder = root / "images" / obj.cls / obj.name
    folder.mkdir()
    for view, data in enumerate(encoded):
        (folder / view_filename(view, encoding)).write_bytes(data)
    return None
