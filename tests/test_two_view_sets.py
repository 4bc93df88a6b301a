"""Sets whose objects have two views (digits): dataset.json's views and augmentations reach both loaders, training,
eval-cur, compare and bench; folders from before those keys read as 12-view sets with flips."""
import json

import pytest

from helpers import TINY, invoke
from mmtm.loaders.dataset import DatasetError, open_dataset
from mmtm.loaders.factory import two_view_loader

try:
    import nvidia.dali  # noqa: F401
    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False

BACKENDS = [pytest.param("dali", marks=pytest.mark.skipif(not HAVE_DALI, reason="nvidia.dali does not import")),
            "torch"]


@pytest.fixture(scope="module")
def two(make_dataset, tmp_path_factory):
    """A two-view set that allows no flips, as `mmtm prep digits` writes: 3 classes, train 24, val 12, test 9."""
    return make_dataset(tmp_path_factory.mktemp("two"), num_views=2, augmentations=(),
                        per_split={"train": 8, "val": 4, "test": 3})


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_two_view_set_loads_views_0_and_1_and_is_never_mirrored(two, backend, identify):
    rows = open_dataset(two).rows("train")
    loader = two_view_loader(two, "train", backend=backend, device="cpu", train=True, batch_size=4, seed=1)
    assert loader.views == (0, 1)
    seen = 0
    for epoch in range(2):
        for batch in loader:
            for k, i in enumerate(batch.index.tolist()):
                n = int(rows[i].object.rsplit("_", 1)[1])
                assert identify(batch.view0[k]) == (n, 0, False) and identify(batch.view1[k]) == (n, 1, False)
                seen += 1
    assert seen == 48
    with pytest.raises(DatasetError, match=r"view index 6 is out of range; this dataset's views are 0\.\.1"):
        two_view_loader(two, "val", views=(0, 6), backend=backend, device="cpu", train=False, batch_size=4, seed=0)


def test_a_folder_without_the_new_keys_is_a_12_view_set_with_flips(make_dataset, tmp_path):
    data = make_dataset(tmp_path, classes=2, per_split={"train": 8})
    meta = json.loads((data / "dataset.json").read_text())
    for key in ("num_views", "augmentations"):
        del meta[key]
    (data / "dataset.json").write_text(json.dumps(meta))
    dataset = open_dataset(data)
    assert (dataset.num_views, dataset.default_views, dataset.flips) == (12, (0, 6), True)
    loader = two_view_loader(data, "train", backend="torch", device="cpu", train=True, batch_size=4, seed=0)
    assert loader.views == (0, 6) and loader.flip


@pytest.mark.parametrize("meta, message", [
    ({"num_views": 1}, "'num_views' must be a whole number of views, at least 2"),
    ({"default_views": [0, 2]}, "'default_views' must be two different view indices 0..1"),
    ({"augmentations": ["rotate"]}, "'augmentations' must be a list of hflip"),
])
def test_bad_view_keys_in_dataset_json_are_one_line(make_dataset, tmp_path, meta, message):
    data = make_dataset(tmp_path, classes=2, num_views=2)
    (data / "dataset.json").write_text(json.dumps({**json.loads((data / "dataset.json").read_text()), **meta}))
    with pytest.raises(DatasetError, match=message):
        open_dataset(data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_two_view_set_trains_and_evaluates(two, tmp_path, backend):
    threads = ["--loader-threads", "1"] if backend == "dali" else []
    run = tmp_path / "run"
    r = invoke("train", "--data", two, "--out", run, "--epochs", 2, *TINY, "--loader", backend, *threads)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["views"] == [0, 1]
    r = invoke("eval-cur", run, "--loader", backend, "--json")
    assert r.exit_code == 0, r.output
    cur = json.loads((run / "cur.json").read_text())
    assert cur["views"] == [0, 1] and cur["n"] == 9
    r = invoke("train", "--data", two, "--out", tmp_path / "bad", "--epochs", 1, *TINY, "--views", "0,6")
    assert r.exit_code == 2 and "view index 6 is out of range; this dataset's views are 0..1" in r.output
    assert not (tmp_path / "bad").exists()


def test_compare_and_bench_on_a_two_view_set(two, tmp_path, figures_not_drawn):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"width": 4, "batch_size": 4, "loader": "torch", "num_threads": 0, "device": "cpu",
                               "precise_bn": 2, "max_steps_per_epoch": 2}))
    r = invoke("compare", "--data", two, "--out", tmp_path / "cmp", "--policies", "vanilla", "--seeds", "0",
               "--config", cfg, "--epochs", "1", "--baselines")
    assert r.exit_code == 0, r.output
    assert "views [0, 1]" in (tmp_path / "cmp" / "comparison.md").read_text()
    r = invoke("bench", "loader", "--data", two, "--batch-size", "4", "--loader-threads", "1", "--repeats", "1",
               "--max-batches", "1", "--warmup-batches", "0", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["config"]["views"] == [0, 1]
