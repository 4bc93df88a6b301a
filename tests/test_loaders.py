"""Two-view loaders on CPU, both backends: pairing, order, sharding, determinism, agreement, errors."""
from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmtm.loaders.factory import two_view_loader
from mmtm.bench.loader import bench_loader
from mmtm.loaders.dataset import DatasetError, open_dataset
from mmtm.loaders.two_view import MEAN, STD, Batch
from mmtm.loaders.errors import UserError

try:
    import nvidia.dali  # noqa: F401
    HAVE_DALI = True
except ImportError:
    HAVE_DALI = False

needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="nvidia.dali does not import")
BACKENDS = [pytest.param("dali", marks=needs_dali), "torch"]
# After normalisation one 8-bit level is 1/(0.224*255) ~ 0.0175 at most; allow 3 levels of decoder
# difference. Both CPU decoders are libjpeg-turbo and measured identical (max diff 2.4e-7).
PIXEL_TOL = 0.06


@pytest.fixture(scope="module")
def data(make_dataset, tmp_path_factory):
    """3 classes; train 24, val 12, test 9 objects."""
    return make_dataset(tmp_path_factory.mktemp("loaders"), per_split={"train": 8, "val": 4, "test": 3})


@pytest.fixture
def small(make_dataset, tmp_path):
    """A throwaway dataset a test may damage: 2 classes, val 4 objects."""
    return make_dataset(tmp_path, classes=2, per_split={"train": 1, "val": 2, "test": 1})


def load(data, split, backend, *, train=False, batch_size=4, seed=0, **kw):
    return two_view_loader(data, split, backend=backend, device="cpu", train=train, batch_size=batch_size,
                           seed=seed, **kw)


def number(row) -> int:
    return int(row.object.rsplit("_", 1)[1])


def check_batch(batch: Batch, rows, identify, views=(0, 6)) -> list[tuple[bool, bool]]:
    """Both views of every sample show the object its index names, with its label; returns mirroring."""
    assert batch.view0.dtype == batch.view1.dtype == torch.float32
    assert batch.label.dtype == batch.index.dtype == torch.int64
    assert batch.view0.shape == batch.view1.shape == (len(batch.index), 3, 16, 16)
    mirrored = []
    for k, i in enumerate(batch.index.tolist()):
        n0, v0, m0 = identify(batch.view0[k])
        n1, v1, m1 = identify(batch.view1[k])
        assert (n0, v0, n1, v1) == (number(rows[i]), views[0], number(rows[i]), views[1])
        assert int(batch.label[k]) == rows[i].label
        mirrored.append((m0, m1))
    return mirrored


def epoch_indices(loader) -> list[list[int]]:
    return [b.index.tolist() for b in loader]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_keeps_file_order_partial_batch_and_no_flips(data, backend, identify):
    rows = open_dataset(data).rows("val")
    loader = load(data, "val", backend, batch_size=5, views=(2, 9))
    assert (loader.backend, loader.device, len(loader), loader.num_samples) == (backend, torch.device("cpu"), 3, 12)
    assert loader.classes == ["c0", "c1", "c2"] and loader.dataset.root == data
    for epoch in range(2):
        batches = list(loader)
        assert [len(b.index) for b in batches] == [5, 5, 2]
        assert sum((b.index.tolist() for b in batches), []) == list(range(12))
        for b in batches:
            assert not any(m0 or m1 for m0, m1 in check_batch(b, rows, identify, views=(2, 9)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_pairs_stay_together_under_shuffle_and_flips(data, backend, identify):
    rows = open_dataset(data).rows("train")
    loader = load(data, "train", backend, train=True, batch_size=5, seed=1)
    assert (len(loader), loader.num_samples) == (4, 20)  # 24 objects: the partial batch of 4 is dropped
    orders, mirrored = [], []
    for epoch in range(3):
        batches = list(loader)
        assert [len(b.index) for b in batches] == [5] * 4
        order = sum((b.index.tolist() for b in batches), [])
        assert len(set(order)) == 20
        orders.append(order)
        for b in batches:
            mirrored += check_batch(b, rows, identify)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    flips = [m for pair in mirrored for m in pair]
    assert 0.2 < sum(flips) / len(flips) < 0.8
    assert any(m0 != m1 for m0, m1 in mirrored)  # each view draws its own flip


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_epoch_determine_everything(data, backend):
    a = load(data, "train", backend, train=True, seed=3)
    b = load(data, "train", backend, train=True, seed=3)
    first_a, first_b = list(a), list(b)
    assert all(torch.equal(x.view0, y.view0) and torch.equal(x.view1, y.view1) and torch.equal(x.index, y.index)
               for x, y in zip(first_a, first_b))
    later_a = [epoch_indices(a) for _ in range(3)]  # epochs 1, 2, 3
    b.set_epoch(2)
    assert epoch_indices(b) == later_a[1]
    assert epoch_indices(b) == later_a[2]  # without set_epoch the epoch advances by one
    other = load(data, "train", backend, train=True, seed=4)
    assert epoch_indices(other) != [x.index.tolist() for x in first_a]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharding_train_drops_tail_equally_and_eval_covers_split(data, backend, identify):
    rows = open_dataset(data).rows("test")  # 9 objects
    train = [load(data, "test", backend, train=True, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert [(len(ld), ld.num_samples) for ld in train] == [(2, 4), (2, 4)]
    for epoch in range(2):
        seen = []
        for loader in train:
            for batch in loader:
                check_batch(batch, rows, identify)
                seen += batch.index.tolist()
        assert len(seen) == len(set(seen)) == 8
    evals = [load(data, "test", backend, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert [(len(ld), ld.num_samples) for ld in evals] == [(3, 5), (2, 4)]
    shards = [sum(epoch_indices(ld), []) for ld in evals]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaving_an_epoch_early_does_not_disturb_the_next(data, backend, identify):
    rows = open_dataset(data).rows("train")
    loader = load(data, "train", backend, train=True, seed=5)
    for _ in loader:
        break
    second = list(loader)
    fresh = load(data, "train", backend, train=True, seed=5)
    fresh.set_epoch(1)
    assert [b.index.tolist() for b in second] == epoch_indices(fresh)
    for b in second:
        check_batch(b, rows, identify)


@needs_dali
@pytest.mark.parametrize("train", [False, True])
def test_backends_agree_on_objects_order_flips_and_pixels(data, train):
    dali, tv = (list(load(data, "val", be, train=train, batch_size=5, seed=7)) for be in ("dali", "torch"))
    assert [b.index.tolist() for b in dali] == [b.index.tolist() for b in tv]
    assert all(torch.equal(x.label, y.label) for x, y in zip(dali, tv))
    diff = max(float((x.view0 - y.view0).abs().max()) for x, y in zip(dali, tv))
    diff = max(diff, *(float((x.view1 - y.view1).abs().max()) for x, y in zip(dali, tv)))
    assert diff <= PIXEL_TOL


@needs_dali
@pytest.mark.slow
def test_dali_source_in_worker_processes_keeps_the_contract(data, identify):
    """Files read in spawned DALI workers: the same batches, flips and pixels as the torch twin, also across a
    set_epoch jump and an epoch left early (both rebuild the pipeline)."""
    rows = open_dataset(data).rows("train")
    par = load(data, "train", "dali", train=True, batch_size=5, seed=1, source_workers=2)
    twin = load(data, "train", "torch", train=True, batch_size=5, seed=1)

    def same_epoch():
        a, b = list(par), list(twin)
        assert [x.index.tolist() for x in a] == [y.index.tolist() for y in b]
        assert max(float((x.view0 - y.view0).abs().max()) for x, y in zip(a, b)) <= PIXEL_TOL
        assert max(float((x.view1 - y.view1).abs().max()) for x, y in zip(a, b)) <= PIXEL_TOL
        for batch in a:
            check_batch(batch, rows, identify)

    same_epoch()
    same_epoch()
    par.set_epoch(7)
    twin.set_epoch(7)
    same_epoch()
    for loader in (par, twin):
        for _ in loader:
            break
    same_epoch()


@needs_dali
@pytest.mark.slow
def test_the_training_loop_builds_one_dali_pipeline_for_the_whole_run(data, monkeypatch):
    """Three epochs of the real step loop (which never asks past an epoch's last batch) with the source in a worker
    process: the pipeline built at construction serves all three, each epoch's batches in its own order."""
    from mmtm.loaders.dali_backend import DaliTwoViewLoader
    from mmtm.training.config import resolve
    from mmtm.training.hardware import Distributed
    from mmtm.training.loop import build_trainer, train_one_epoch

    builds, served = [], []
    real_build, real_next = DaliTwoViewLoader._build, DaliTwoViewLoader._next_batch
    monkeypatch.setattr(DaliTwoViewLoader, "_build",
                        lambda self, first: builds.append(first) or real_build(self, first))
    monkeypatch.setattr(DaliTwoViewLoader, "_next_batch", lambda self, b, k: _record(served, real_next(self, b, k)))
    loader = load(data, "train", "dali", train=True, batch_size=4, seed=3, num_threads=1, source_workers=1)
    t = build_trainer(resolve("demo", width=4, lr=0.05), 3, torch.device("cpu"), Distributed())

    class Quiet:
        def start_epoch(self, *a): pass
        def step(self, **k): pass

    for epoch in range(3):
        t.epoch = epoch
        loader.set_epoch(epoch)
        train_one_epoch(t, loader, [], Quiet())
    assert builds == [0]
    twin = load(data, "train", "torch", train=True, batch_size=4, seed=3)
    assert served == [b.index.tolist() for _ in range(3) for b in twin]


def _record(served: list, batch: Batch) -> Batch:
    served.append(batch.index.tolist())
    return batch


@pytest.mark.parametrize("backend", BACKENDS)
def test_png_and_grey_images(make_dataset, tmp_path, backend, identify):
    png = make_dataset(tmp_path, name="png", classes=2, per_split={"val": 2}, encoding="png")
    rows = open_dataset(png).rows("val")
    for batch in load(png, "val", backend):
        check_batch(batch, rows, identify)
    grey = make_dataset(tmp_path, name="grey", classes=2, per_split={"val": 2}, grey=True)
    for batch in load(grey, "val", backend):  # one-channel files come out as three equal channels
        for view in (batch.view0, batch.view1):
            pixels = view * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
            assert view.shape[1] == 3
            assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-3)
            assert torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-3)


def view_file(data, split, index, view):
    dataset = open_dataset(data)
    return dataset.view_path(dataset.rows(split)[index], view)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", ["garbage", "truncated", "other size", "vanished"])
def test_bad_image_is_named(small, backend, damage):
    path = view_file(small, "val", 3, 6)
    loader = load(small, "val", backend, batch_size=2)
    if damage == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "other size":
        Image.new("RGB", (24, 24)).save(path)
    else:
        path.unlink()
    with pytest.raises(DatasetError) as err:
        list(loader)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "24x24" in message if damage == "other size" else "mmtm prep" in message


def test_dataset_errors_are_one_line(small):
    with pytest.raises(DatasetError, match="view index 12 is out of range"):
        two_view_loader(small, "val", views=(0, 12), batch_size=2, train=False, seed=0)
    meta_path = small / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DatasetError, match="version 99 is not supported"):
        two_view_loader(small, "val", batch_size=2, train=False, seed=0)


def test_empty_split(make_dataset, tmp_path):
    data = make_dataset(tmp_path, per_split={"test": 0})
    with pytest.raises(DatasetError, match="split 'test' has no objects"):
        two_view_loader(data, "test", batch_size=2, train=False, seed=0)


def test_backend_and_batch_choices(small, monkeypatch):
    with pytest.raises(UserError, match="unknown loader backend 'jax'"):
        two_view_loader(small, "val", batch_size=2, train=False, seed=0, backend="jax")
    with pytest.raises(UserError, match="less than one batch"):
        two_view_loader(small, "train", batch_size=8, train=True, seed=0, backend="torch")
    monkeypatch.setattr("mmtm.loaders.factory._dali_imports", lambda: False)
    with pytest.raises(ImportError, match="needs NVIDIA DALI"):
        two_view_loader(small, "val", batch_size=2, train=False, seed=0, backend="dali")
    assert two_view_loader(small, "val", batch_size=2, train=False, seed=0).backend == "torch"


def test_the_torch_loader_does_not_import_dali(small, monkeypatch):
    """Asking for the torch loader never imports DALI (~0.5 s in every run and sweep job)."""
    def no(): raise AssertionError("DALI was imported")  # noqa: E704
    monkeypatch.setattr("mmtm.loaders.factory._dali_imports", no)
    assert two_view_loader(small, "val", batch_size=2, train=False, seed=0, backend="torch").backend == "torch"


def dali_threads_and_children() -> tuple[int, list[str]]:
    dali, children = 0, []
    for task in Path("/proc/self/task").iterdir():
        try:
            dali += (task / "comm").read_text().startswith("[DALI]")
            children += (task / "children").read_text().split()
        except OSError:  # a thread that just ended
            continue
    return dali, sorted(children)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_leak_no_threads_or_workers_and_dropping_the_loader_frees_them(data, backend):
    gc.collect()  # earlier tests' loaders kept in cycles by exception tracebacks: their workers go now
    before = dali_threads_and_children()
    loader = load(data, "train", backend, train=True)
    list(loader)
    after_first = dali_threads_and_children()
    for _ in range(3):
        list(loader)
    for _ in loader:  # left early
        break
    list(loader)
    assert dali_threads_and_children() == after_first
    assert len(after_first[1]) - len(before[1]) == (2 if backend == "torch" else 0)  # persistent workers
    del loader
    assert dali_threads_and_children() == before


def test_bench_loader_reports_every_backend_and_the_ceiling(data):
    result = bench_loader(data, batch_size=4, threads=1, repeats=2, warmup_batches=1, max_batches=2)
    expected = {"torch", "memory"} | ({"dali"} if HAVE_DALI else set())
    assert set(result["results"]) == expected
    for r in result["results"].values():
        assert r["images_per_s"] > 0 and r["cpu_ms_per_image"] > 0 and len(r["images_per_s_runs"]) == 2
    assert result["config"]["objects"] == 24 and result["config"]["image_size"] == 16
