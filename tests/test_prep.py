"""`prep` end to end on tiny trees: render and mesh ingest, every bad input, atomic output, the seeded split."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from mmtm.cli.prep import prep
from helpers import BIN
from mmtm.loaders.dataset import open_dataset
from mmtm.loaders.prep.build import detect_source, prepare
from mmtm.loaders.prep.mvcnn_tree import render_filename
from mmtm.loaders.errors import UserError

SIZE = 16
OPTS = dict(image_size=SIZE, workers=1, progress=False)
# class → (official train objects, official test objects)
TREE = {"chair": (4, 1), "lamp": (3, 1)}


def make_render_tree(root, tree=TREE, size=24):
    """An MVCNN-style tree; view v of every object is a flat grey of brightness 20·v, so order can be checked."""
    for cls, (n_train, n_test) in tree.items():
        for split, first, n in (("train", 1, n_train), ("test", n_train + 1, n_test)):
            folder = root / cls / split
            folder.mkdir(parents=True)
            for i in range(first, first + n):
                for v in range(12):
                    Image.new("L", (size, size), 20 * v).save(folder / render_filename(f"{cls}_{i:04d}", v))
    return root


def make_mesh_tree(root, tree=TREE):
    """ModelNet-style OFF files, header glued to the counts as in the real set."""
    tetra = "OFF4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
    for cls, (n_train, n_test) in tree.items():
        for split, first, n in (("train", 1, n_train), ("test", n_train + 1, n_test)):
            folder = root / cls / split
            folder.mkdir(parents=True)
            for i in range(first, first + n):
                (folder / f"{cls}_{i:04d}.off").write_text(tetra)
    return root


def snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_render_tree_ingest(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    assert detect_source(src) == "renders"
    summary = prepare(src, tmp_path / "out", **OPTS)
    ds = open_dataset(tmp_path / "out")
    assert ds.classes == ["chair", "lamp"] and ds.image_size == SIZE and ds.meta["source"] == "renders"
    # 7 official-train objects, round(0.2·7) = 1 to validation; 2 test.
    assert summary["counts"] == {"train": 6, "val": 1, "test": 2} == ds.meta["counts"]
    assert summary["views"] == 9 * 12 and summary["skipped"] == []
    rows = ds.rows("train") + ds.rows("val") + ds.rows("test")
    assert {r.object for r in rows} == {f"chair_{i:04d}" for i in range(1, 6)} | {f"lamp_{i:04d}" for i in range(1, 5)}
    assert all(r.label == ds.classes.index(r.cls) for r in rows)
    test_rows = ds.rows("test")
    assert [r.object for r in test_rows] == ["chair_0005", "lamp_0004"]
    for v in (0, 6, 11):
        with Image.open(ds.view_path(test_rows[0], v)) as im:
            assert im.size == (SIZE, SIZE)
            assert abs(np.asarray(im).astype(int).mean() - 20 * v) < 3  # vVV comes from shaded_v(VV+1)
    assert leftovers(tmp_path) == []


def test_png_encoding_and_cli(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    app = typer.Typer()
    app.command()(prep)
    result = CliRunner().invoke(app, [str(src), "--out", str(tmp_path / "out"), "--image-size", "16",
                                      "--encoding", "png", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 classes, 6 train / 1 val / 2 test objects" in result.output
    assert (tmp_path / "out" / "images" / "chair" / "chair_0001" / "v11.png").is_file()
    bad = CliRunner().invoke(app, [str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "error:" in bad.output and "nowhere" in bad.output
    bad = CliRunner().invoke(app, [str(src), "--out", str(tmp_path / "o2"), "--classes", "3"])
    assert bad.exit_code == 2 and "--classes" in bad.output


def test_mesh_tree_ingest(tmp_path):
    src = make_mesh_tree(tmp_path / "ModelNet")
    assert detect_source(src) == "meshes"
    summary = prepare(src, tmp_path / "out", encoding="png", **OPTS)
    ds = open_dataset(tmp_path / "out")
    assert summary["counts"] == {"train": 6, "val": 1, "test": 2} and ds.meta["up_axis"] == "z"
    row = ds.rows("test")[1]
    views = [np.asarray(Image.open(ds.view_path(row, v))) for v in range(12)]
    assert all(v.shape == (SIZE, SIZE) and v.max() > 0 for v in views)


def test_seeded_validation_split(tmp_path):
    src = make_render_tree(tmp_path / "renders", {"a": (10, 1), "b": (10, 1)}, size=SIZE)
    val = {}
    for name, seed in (("s1", 10), ("s2", 10), ("s3", 11)):
        prepare(src, tmp_path / name, seed=seed, val_fraction=0.25, **OPTS)
        val[name] = [r.object for r in open_dataset(tmp_path / name).rows("val")]
    assert len(val["s1"]) == 5 and val["s1"] == val["s2"] and val["s1"] != val["s3"]
    train = {r.object for r in open_dataset(tmp_path / "s1").rows("train")}
    assert len(train) == 15 and not train & set(val["s1"])


def test_rerun_on_same_out_is_safe(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    prepare(src, tmp_path / "out", **OPTS)
    first = snapshot(tmp_path / "out")
    prepare(src, tmp_path / "out", **OPTS)
    assert snapshot(tmp_path / "out") == first and leftovers(tmp_path) == []


# Each breaks a good tree; the message must name this file (relative to the tree).
def missing_view(src):
    (src / "lamp" / "train" / render_filename("lamp_0002", 6)).unlink()
    return render_filename("lamp_0002", 6)


def undecodable_image(src):
    # A valid header with its pixel data cut short: only a full decode finds it.
    path = src / "chair" / "test" / render_filename("chair_0005", 3)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    return path.name


def not_an_image(src):
    path = src / "chair" / "train" / render_filename("chair_0001", 0)
    path.write_text("hello")
    return path.name


def badly_named_png(src):
    Image.new("L", (4, 4)).save(src / "chair" / "train" / "chair_0001_view1.png")
    return "chair_0001_view1.png"


@pytest.mark.parametrize("breaks", [missing_view, undecodable_image, not_an_image, badly_named_png])
def test_bad_render_tree_fails_cleanly(tmp_path, breaks):
    src = make_render_tree(tmp_path / "renders")
    name = breaks(src)
    with pytest.raises(UserError, match=name):
        prepare(src, tmp_path / "out", **OPTS)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_kill_9_during_prep_then_next_prep_leaves_no_temporary(tmp_path):
    out = tmp_path / "out"
    command = [str(BIN / "mmtm"), "prep", "synthetic", "--out", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen([*command, "--classes", "10", "--per-class", "100", "--image-size", "128"])
    deadline = time.time() + 60
    while not leftovers(tmp_path) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # views are being written
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "prep finished before it could be killed"
    assert leftovers(tmp_path)
    subprocess.run([*command, "--classes", "2", "--per-class", "5", "--image-size", "16"], check=True)
    assert leftovers(tmp_path) == [] and open_dataset(out).classes


def test_failure_leaves_previous_dataset_unchanged(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    prepare(src, tmp_path / "out", **OPTS)
    before = snapshot(tmp_path / "out")
    undecodable_image(src)
    with pytest.raises(UserError):
        prepare(src, tmp_path / "out", **OPTS)
    assert snapshot(tmp_path / "out") == before and leftovers(tmp_path) == []


def test_unreadable_mesh(tmp_path):
    src = make_mesh_tree(tmp_path / "ModelNet")
    (src / "lamp" / "test" / "lamp_0004.off").write_text("OFF\n3 1 0\n0 0 0\n1 0\n")
    with pytest.raises(UserError, match="lamp_0004.off"):
        prepare(src, tmp_path / "out", **OPTS)
    assert not (tmp_path / "out").exists()
    summary = prepare(src, tmp_path / "out", skip_bad=True, **OPTS)
    assert summary["counts"]["test"] == 1 and "lamp_0004.off" in summary["skipped"][0]


def test_skip_bad_drops_and_lists(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    missing = missing_view(src)
    broken = undecodable_image(src)
    summary = prepare(src, tmp_path / "out", skip_bad=True, **OPTS)
    assert len(summary["skipped"]) == 2
    assert any(missing in s for s in summary["skipped"]) and any(broken in s for s in summary["skipped"])
    ds = open_dataset(tmp_path / "out")
    objects = {r.object for s in ("train", "val", "test") for r in ds.rows(s)}
    assert "lamp_0002" not in objects and "chair_0005" not in objects and len(objects) == 7
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["skipped"] == summary["skipped"]


def test_empty_class(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    (src / "vase" / "train").mkdir(parents=True)
    (src / "vase" / "test").mkdir()
    with pytest.raises(UserError, match="renders/vase: class vase has no objects"):
        prepare(src, tmp_path / "out", **OPTS)
    assert not (tmp_path / "out").exists()


def test_class_emptied_by_skip_bad(tmp_path):
    src = make_render_tree(tmp_path / "renders", {"a": (2, 1), "b": (1, 0)}, size=SIZE)
    (src / "b" / "train" / render_filename("b_0001", 0)).write_bytes(b"")
    with pytest.raises(UserError, match="b: class b has no objects after dropping"):
        prepare(src, tmp_path / "out", skip_bad=True, **OPTS)


def test_unknown_layouts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (4, 4)).save(flat / "x.png")
    with pytest.raises(UserError, match="flat: unknown layout"):
        prepare(flat, tmp_path / "out", **OPTS)
    nested = tmp_path / "nested" / "chair" / "train"
    nested.mkdir(parents=True)
    (nested / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="unknown layout"):
        prepare(tmp_path / "nested", tmp_path / "out", **OPTS)
    with pytest.raises(UserError, match="no such folder"):
        prepare(tmp_path / "missing", tmp_path / "out", **OPTS)
    assert not (tmp_path / "out").exists()


def test_bad_options(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    for bad, flag in ((dict(encoding="gif"), "--encoding"), (dict(val_fraction=1.0), "--val-fraction"),
                      (dict(image_size=4), "--image-size"), (dict(up="w"), "up axis")):
        with pytest.raises(UserError, match=flag):
            prepare(src, tmp_path / "out", **{**OPTS, **bad})
    assert not (tmp_path / "out").exists()


def test_dangerous_out_folders_are_refused(tmp_path):
    src = make_render_tree(tmp_path / "renders")
    with pytest.raises(UserError, match="outside the source"):
        prepare(src, src / "prepared", **OPTS)
    with pytest.raises(UserError, match="outside the source"):
        prepare(src, tmp_path, **OPTS)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare(src, precious, **OPTS)
    assert (precious / "thesis.tex").read_text() == "..."
