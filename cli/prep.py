"""`mmtm prep`: build a prepared dataset folder from MVCNN renders, meshes or the synthetic set."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.errors import user_errors
from loaders.errors import UserError
from loaders.prep import synthetic
from loaders.prep.build import SYNTHETIC, prepare, prepare_synthetic

FOLDER_IMAGE_SIZE = 224


@user_errors
def prep(
    src: str = typer.Argument(..., metavar="SRC",
                              help="A render tree (modelnet40_images_new_12x), a mesh tree (ModelNet40 OFF files), "
                                   "or the word `synthetic`."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write; a previous dataset there is replaced "
                                                "only once the new one is complete."),
    image_size: Optional[int] = typer.Option(None, help=f"Side of the square images in pixels [{FOLDER_IMAGE_SIZE}; "
                                                        f"synthetic: {synthetic.DEFAULT_IMAGE_SIZE}]."),
    encoding: str = typer.Option("jpeg", help="jpeg (quality 90) or png."),
    val_fraction: float = typer.Option(0.2, help="Fraction of the official train split held out for validation."),
    seed: int = typer.Option(10, help="Seed of the validation split (paper: 10); for `synthetic` it also seeds "
                                      "the shapes."),
    workers: int = typer.Option(2, help="Processes rendering or ingesting in parallel."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop objects with a missing view or a file that does "
                                                             "not read, list them, and go on."),
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
    """Prepare a two-view dataset: all 12 MVCNN views of every object, split files, dataset.json.

    \b
    Examples:
      mmtm prep synthetic --out data                # 10 classes, 64 px
      mmtm prep synthetic --out d20 --classes 20 --per-class 100
      mmtm prep synthetic --out data-ease --views-differ ease
      mmtm prep modelnet40_images_new_12x --out mn40  # MVCNN renders
      mmtm prep ModelNet40 --out mn40 --workers 8     # render OFF meshes
      mmtm prep renders --out mn40 --skip-bad --encoding png
    """
    if seed < 0:  # numpy's generators take no negative seed
        raise UserError(f"--seed must be at least 0, got {seed}")
    if src == SYNTHETIC:
        summary = prepare_synthetic(
            out, classes=synthetic.DEFAULT_CLASSES if classes is None else classes,
            per_class=synthetic.DEFAULT_PER_CLASS if per_class is None else per_class,
            image_size=synthetic.DEFAULT_IMAGE_SIZE if image_size is None else image_size, encoding=encoding,
            val_fraction=val_fraction, seed=seed, workers=workers, progress=not quiet, views_differ=views_differ)
    else:
        if classes is not None or per_class is not None or views_differ != "information":
            raise UserError("--classes, --per-class and --views-differ apply to `mmtm prep synthetic` only")
        summary = prepare(src, out, image_size=FOLDER_IMAGE_SIZE if image_size is None else image_size,
                          encoding=encoding, val_fraction=val_fraction, seed=seed, workers=workers, skip_bad=skip_bad,
                          progress=not quiet, up=up)
    for line in summary["skipped"]:
        print(f"skipped: {line}")
    c = summary["counts"]
    print(f"{summary['out']}: {summary['classes']} classes, {c['train']} train / {c['val']} val / {c['test']} test "
          f"objects, {summary['views']} views in {summary['seconds']:.1f} s ({summary['views_per_s']:.0f} views/s)"
          + (f", {len(summary['skipped'])} skipped" if summary["skipped"] else ""))
