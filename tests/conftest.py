"""Shared test fixtures: tiny prepared datasets whose pixels say what they show.

`make_dataset(root, ...)` writes a dataset that follows `mmtm.loaders.dataset`'s contract (12 views per
object, split index files, dataset.json). Every image is four flat blocks, so JPEG keeps the
colours to a few levels when the size is a multiple of 16:

    top half      (R, G, B) = (24 + 16*(n % 13), 24 + 16*view, 24 + 16*(n // 13 % 13))
    bottom-left   the class colour (`class_colour`): the label is learnable from the pixels
    bottom-right  black: a horizontal flip moves it to the left

n is the object's number, also the last field of its name (`c1_0007` is object 7 of class 1);
objects are numbered over train, val, test in index order, classes interleaved within a split.
The `identify` fixture reads (n, view, mirrored) back from a normalised [3,H,W] image; n is unique up to 169
objects. Training tests can use the same datasets: the class colour makes them learnable.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

# One torch thread per test process (and per process a test starts): pytest runs one worker per core, and tiny
# networks gain nothing from more threads, while two processes that each take every core slow each other many times.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image

from mmtm.loaders.dataset import AUGMENTATIONS, NUM_VIEWS, SPLITS, Row, view_filename, write_meta, write_split

if TYPE_CHECKING:
    import torch

_DEFAULT_PER_SPLIT = {"train": 4, "val": 2, "test": 2}


def pytest_configure(config):
    # In every process that runs tests, torchvision before any test makes a GL context: the reverse order crashes
    # torch 2.14. Not in pytest-xdist's controller, which runs none, so its workers start without waiting on it.
    if getattr(config.option, "dist", "no") == "no" or hasattr(config, "workerinput"):
        import torchvision  # noqa: F401
    # torchvision 0.29 warns on every decode that TorchCodec will replace it; the loaders accept that.
    config.addinivalue_line(
        "filterwarnings", "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


def class_colour(label: int) -> tuple[int, int, int]:
    return (60 + 70 * label) % 256, (200 - 50 * label) % 256, (120 + 90 * label) % 256


def object_image(number: int, view: int, label: int, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the pattern described in the module docstring."""
    half = size // 2
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:half] = (24 + 16 * (number % 13), 24 + 16 * view, 24 + 16 * (number // 13 % 13))
    img[half:, :half] = class_colour(label)
    return img


def write_dataset(root: Path, *, classes: int = 3, per_split: dict[str, int] | None = None, size: int = 16,
                  encoding: str = "jpeg", grey: bool = False, num_views: int = NUM_VIEWS,
                  augmentations: tuple[str, ...] = AUGMENTATIONS) -> Path:
    """Write a prepared dataset into `root` (created); per_split counts objects per class; `num_views` views per
    object (2: a two-view set, whose default views are 0 and 1), allowing `augmentations`."""
    per_split = {**_DEFAULT_PER_SPLIT, **(per_split or {})}
    names = [f"c{c}" for c in range(classes)]
    root.mkdir(parents=True)
    (root / "splits").mkdir()
    number = 0
    for split in SPLITS:
        rows = []
        for k in range(per_split[split]):
            for label, cls in enumerate(names):
                obj = f"{cls}_{number:04d}"
                folder = root / "images" / cls / obj
                folder.mkdir(parents=True)
                for view in range(num_views):
                    img = Image.fromarray(object_image(number, view, label, size))
                    if grey:
                        img = img.convert("L")
                    # 4:4:4 chroma and high quality keep flat blocks within a few levels
                    img.save(folder / view_filename(view, encoding), quality=95, subsampling=0)
                rows.append(Row(len(rows), obj, cls, label, f"images/{cls}/{obj}"))
                number += 1
        write_split(root / "splits" / f"{split}.csv", rows)
    counts = {s: per_split[s] * classes for s in SPLITS}
    write_meta(root, classes=names, image_size=size, encoding=encoding, source="synthetic-test",
               counts=counts, val_fraction=0.0, split_seed=0, num_views=num_views, augmentations=augmentations)
    return root


def _identify(image: torch.Tensor) -> tuple[int, int, bool]:
    """(object number, view, mirrored) of one ImageNet-normalised [3,H,W] image from `write_dataset`."""
    import torch

    from mmtm.loaders.two_view import MEAN, STD

    pixels = image.detach().cpu().float() * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    size = pixels.shape[-1]
    half = size // 2
    r, g, b = (round((float(v) - 24) / 16) for v in pixels[:, 1:half - 1, 1:-1].mean(dim=(1, 2)))
    left = float(pixels[:, half + 1:-1, 1:half - 1].mean())
    right = float(pixels[:, half + 1:-1, half + 1:-1].mean())
    return r + 13 * b, g, left < right


@pytest.fixture(scope="session")
def identify():
    """identify(image [3,H,W] normalised) -> (object number, view, mirrored); see the module docstring."""
    return _identify


@pytest.fixture(scope="session")
def make_dataset():
    """make_dataset(tmp_path, classes=3, per_split={...}, size=16, encoding="jpeg", grey=False, num_views=12,
    augmentations=("hflip",), name="data")
    -> the dataset folder tmp_path/name."""
    def make(parent: Path, *, name: str = "data", **kwargs) -> Path:
        return write_dataset(Path(parent) / name, **kwargs)
    return make


@pytest.fixture
def roundtrip():
    """Save with torch.save and load back with weights_only=True, as checkpoints are read."""
    import torch

    def through_checkpoint(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=True)
    return through_checkpoint


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A tiny `mmtm prep synthetic` set: 3 classes × 16 objects at 32 px."""
    from helpers import invoke

    out = tmp_path_factory.mktemp("prep") / "synthetic"
    r = invoke("prep", "synthetic", "--out", out, "--classes", "3", "--per-class", "16", "--image-size", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="session")
def trained_runs(synthetic_data, tmp_path_factory):
    """Run folders vanilla/, balanced/ (α = 0, so it re-balances) and random/: 2 epochs of a width-4 network.
    Tests may add files (cur.json) but must not change what training wrote."""
    from helpers import TINY, invoke

    root = tmp_path_factory.mktemp("runs")
    for name, flags in (("vanilla", []), ("balanced", ["--balanced", "--alpha", "0"]), ("random", ["--random"])):
        r = invoke("train", "--data", synthetic_data, "--out", root / name, "--epochs", 2, *TINY, *flags)
        assert r.exit_code == 0, r.output
    return root


@pytest.fixture
def figures_not_drawn(monkeypatch):
    """For tests about a comparison's tables and runs: each figure is built and its file named, but not laid out and
    drawn, which is most of a comparison's time (tests/test_report.py checks drawn figures)."""
    from mmtm.analysis import plots

    def named_only(fig, path):
        plots.plt.close(fig)
        Path(path).touch()
        return path
    monkeypatch.setattr(plots, "_save", named_only)
