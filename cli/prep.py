"""`mmtm prep`: build a prepared dataset folder from MVCNN renders, meshes, a CSV of image pairs or the synthetic
set."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.errors import user_errors
from loaders.errors import UserError
from loaders.prep import synthetic
from loaders.prep.build import SYNTHETIC, prepare, prepare_synthetic
from loaders.prep.pairs import DEFAULT_TEST_FRACTION, PAIRS, prepare_pairs

FOLDER_IMAGE_SIZE = 224


@user_errors
def prep(
    src: str = typer.Argument(..., metavar="SRC",
                              help="A render tree (modelnet40_images_new_12x), a mesh tree (ModelNet40 OFF files), "
                                   "the word `synthetic`, or the word `pairs` followed by a CSV (docs/data.md)."),
    pairs_csv: Optional[Path] = typer.Argument(None, metavar="[CSV]",
                                               help="pairs only: the CSV with a header view0,view1,label[,split]"
                                                    "[,object] and one object per row (docs/data.md)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write; a previous dataset there is replaced "
                                                "only once the new one is complete."),
    image_size: Optional[int] = typer.Option(None, help=f"Side of the square images in pixels [{FOLDER_IMAGE_SIZE}; "
                                                        f"synthetic: {synthetic.DEFAULT_IMAGE_SIZE}]."),
    encoding: str = typer.Option("jpeg", help="jpeg (quality 90) or png."),
    val_fraction: Optional[float] = typer.Option(None, help="Fraction of the official train split held out for "
                                                            "validation [0.2]; pairs: of what the test draw leaves."),
    test_fraction: Optional[float] = typer.Option(None, help=f"pairs without a split column only: fraction of each "
                                                             f"class drawn for test [{DEFAULT_TEST_FRACTION}]."),
    seed: int = typer.Option(10, help="Seed of the validation split (paper: 10) and of a pairs CSV's seeded "
                                      "split; for `synthetic` it also seeds the shapes."),
    workers: int = typer.Option(2, help="Processes rendering or ingesting in parallel."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop objects with a missing view or a file that does "
                                                             "not read or decode, list them, and go on."),
    up: str = typer.Option("z", help="Upright axis of the meshes, x|y|z (ModelNet40: z)."),
    classes: Optional[int] = typer.Option(None, help=f"synthetic only: number of classes "
                                                    f"[{synthetic.DEFAULT_CLASSES}, at most {synthetic.MAX_CLASSES}]."),
    per_class: Optional[int] = typer.Option(None, help=f"synthetic only: objects per class over all "
                                                      f"splits [{synthetic.DEFAULT_PER_CLASS}]."),
    views_differ: str = typer.Option("information", help="synthetic only: how views 0 and 6 differ. information: "
                                                         "the rear mark names only a pair of classes (view 6 alone "
                                                         "reaches ~0.40); ease: both name the class, the rear mark "
                                                         "is smaller and harder to learn."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Prepare a dataset folder: all 12 MVCNN views of every object (or the two images of a pairs CSV), split
    files, dataset.json.

    \b
    Examples:
      mmtm prep synthetic --out data                # 10 classes, 64 px
      mmtm prep synthetic --out d20 --classes 20 --per-class 100
      mmtm prep synthetic --out data-ease --views-differ ease
      mmtm prep modelnet40_images_new_12x --out mn40  # MVCNN renders
      mmtm prep ModelNet40 --out mn40 --workers 8     # render OFF meshes
      mmtm prep renders --out mn40 --skip-bad --encoding png
      mmtm prep pairs objects.csv --out mine         # two images per object
    """
    if (src == PAIRS) != (pairs_csv is not None):
        raise UserError("a CSV goes with `mmtm prep pairs CSV` only" if pairs_csv is not None else
                        "`mmtm prep pairs` needs the CSV: mmtm prep pairs objects.csv --out DIR")
    if src != PAIRS and test_fraction is not None:
        raise UserError("--test-fraction applies to `mmtm prep pairs` only")
    if src != SYNTHETIC and (classes is not None or per_class is not None or views_differ != "information"):
        raise UserError("--classes, --per-class and --views-differ apply to `mmtm prep synthetic` only")
    val_fraction_or_default = 0.2 if val_fraction is None else val_fraction
    if src == PAIRS:
        if up != "z":
            raise UserError("--up applies to meshes only, not to `mmtm prep pairs`")
        summary = prepare_pairs(pairs_csv, out, image_size=image_size or FOLDER_IMAGE_SIZE, encoding=encoding,
                                val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, workers=workers,
                                skip_bad=skip_bad, progress=not quiet)
    elif src == SYNTHETIC:
        summary = prepare_synthetic(
            out, classes=synthetic.DEFAULT_CLASSES if classes is None else classes,
            per_class=synthetic.DEFAULT_PER_CLASS if per_class is None else per_class,
            image_size=image_size or synthetic.DEFAULT_IMAGE_SIZE, encoding=encoding,
            val_fraction=val_fraction_or_default,
            seed=seed, workers=workers, progress=not quiet, views_differ=views_differ)
    else:
        summary = prepare(src, out, image_size=image_size or FOLDER_IMAGE_SIZE, encoding=encoding,
                          val_fraction=val_fraction_or_default, seed=seed, workers=workers, skip_bad=skip_bad,
                          progress=not quiet, up=up)
    for line in summary["skipped"]:
        print(f"skipped: {line}")
    c = summary["counts"]
    print(f"{summary['out']}: {summary['classes']} classes, {c['train']} train / {c['val']} val / {c['test']} test "
          f"objects, {summary['views']} views in {summary['seconds']:.1f} s ({summary['views_per_s']:.0f} views/s)"
          + (f", {len(summary['skipped'])} skipped" if summary["skipped"] else ""))
    if src == PAIRS:
        print(f"train on its two views with: mmtm train --data {summary['out']} --views 0,1 ...")
