"""The procedural set: seeded byte for byte, the requested classes, distinct front and rear views."""
from __future__ import annotations

import numpy as np
import pytest

from mmtm.loaders.prep import synthetic
from mmtm.loaders.dataset import open_dataset
from mmtm.loaders.prep.build import prepare_synthetic
from mmtm.loaders.errors import UserError

TINY = dict(classes=3, per_class=5, image_size=16, progress=False)


def tree_bytes(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_mesh_is_seeded():
    a = synthetic.make_mesh(1, 4, 3, seed=0)
    b = synthetic.make_mesh(1, 4, 3, seed=0)
    c = synthetic.make_mesh(1, 4, 3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_class_names_and_limits():
    assert len(synthetic.class_names(synthetic.MAX_CLASSES)) == synthetic.MAX_CLASSES >= 20
    assert len(set(synthetic.class_names(12))) == 12
    with pytest.raises(ValueError):
        synthetic.class_names(synthetic.MAX_CLASSES + 1)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    prepare_synthetic(tmp_path / "a", seed=3, workers=1, **TINY)
    prepare_synthetic(tmp_path / "b", seed=3, workers=2, **TINY)  # worker count must not matter
    prepare_synthetic(tmp_path / "c", seed=4, workers=1, **TINY)
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    images = [k for k in a if k.startswith("images/")]
    assert len(images) == 3 * 5 * 12
    assert any(a[k] != c[k] for k in images)


def test_layout_classes_and_views(tmp_path):
    summary = prepare_synthetic(tmp_path / "d", workers=1, **TINY)
    ds = open_dataset(tmp_path / "d")
    assert ds.classes == sorted(synthetic.class_names(3)) and ds.image_size == 16 and ds.encoding == "jpeg"
    # 1 of 5 objects per class is test; the 12 official-train objects lose round(0.2·12) = 2 to validation.
    assert summary["counts"] == {"train": 10, "val": 2, "test": 3}
    assert ds.meta["synthetic"]["seed"] == 10
    row = ds.rows("train")[0]
    from PIL import Image

    front, rear = (np.asarray(Image.open(ds.view_path(row, v))).astype(int) for v in (0, 6))
    assert front.shape == (16, 16) and front.max() > 50
    assert np.abs(front - rear).mean() > 2


def test_bad_synthetic_options(tmp_path):
    with pytest.raises(UserError, match="--classes"):
        prepare_synthetic(tmp_path / "x", classes=synthetic.MAX_CLASSES + 1, per_class=5, progress=False)
    with pytest.raises(UserError, match="--per-class"):
        prepare_synthetic(tmp_path / "x", classes=3, per_class=2, progress=False)
    assert not (tmp_path / "x").exists()


def test_the_ease_variant_writes_each_objects_own_class_on_both_faces():
    names = synthetic.class_names(10)
    for c in range(10):
        for obj in range(1, 9):
            assert synthetic.marks(c, 10, obj, seed=10, views_differ="ease") == (names[c], names[c])


def test_the_information_variant_writes_only_the_class_pair_on_the_rear():
    names = synthetic.class_names(10)
    rears = [(c, synthetic.marks(c, 10, obj, seed=10)[1]) for c in range(10) for obj in range(1, 41)]
    own_pair = [rear == names[2 * (c // 2)] for c, rear in rears]
    assert all(synthetic.marks(c, 10, 1, seed=10)[0] == names[c] for c in range(10))  # the front names the class
    assert {rear for _, rear in rears} <= {names[2 * p] for p in range(5)}               # the rear only a pair
    assert 0.7 < sum(own_pair) / len(own_pair) < 0.9  # 1 − 0.25 + 0.25/5 = 0.8 expected


def test_view_accuracy_limits_of_the_designs():
    assert synthetic.view_accuracy_limits("information", 10)["6"] == pytest.approx(0.4)  # 5 pairs: 0.8/2
    assert synthetic.view_accuracy_limits("ease", 10)["6"] == 1.0
    assert synthetic.view_accuracy_limits("information", 10)["0"] == 1.0
    assert synthetic.view_accuracy_limits("information", 10)["3"] is None


@pytest.mark.parametrize("variant", synthetic.VARIANTS)
def test_both_variants_are_reproducible_byte_for_byte_and_recorded(tmp_path, variant):
    prepare_synthetic(tmp_path / "a", seed=3, workers=1, views_differ=variant, **TINY)
    prepare_synthetic(tmp_path / "b", seed=3, workers=2, views_differ=variant, **TINY)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    meta = open_dataset(tmp_path / "a").meta
    assert meta["synthetic"]["views_differ"] == variant
    assert meta["view_accuracy_limits"] == synthetic.view_accuracy_limits(variant, 3)


def _rear_agreement(root, split: str, agreement: float = 1.0) -> list[bool]:
    """Per object of the written split, from the generator's record (`marks`): does the rear mark name its class?"""
    names = synthetic.class_names(3)
    out = []
    for row in open_dataset(root).rows(split):
        c, n = names.index(row.cls), int(row.object.rsplit("_", 1)[1])
        front, rear = synthetic.marks(c, 3, n, seed=3, views_differ="shortcut", test=split == "test",
                                      agreement=agreement)
        assert front == names[c]  # the front always names the class
        out.append(rear == synthetic.SHORTCUT_GLYPHS[c])  # the rear glyph that stands for class c
    return out


def test_the_shortcut_rear_mark_agrees_in_train_and_val_and_is_at_chance_in_test(tmp_path):
    from scipy.stats import binomtest

    prepare_synthetic(tmp_path / "s", seed=3, workers=1, views_differ="shortcut",
                      **{**TINY, "per_class": 10, "test_fraction": 0.5})
    meta = open_dataset(tmp_path / "s").meta
    for split in ("train", "val", "test"):
        agree = _rear_agreement(tmp_path / "s", split)
        assert meta["shortcut_agreement_by_split"][split] == sum(agree) / len(agree)
        if split != "test":
            assert all(agree), split
    assert meta["view_accuracy_limits_by_split"]["val"]["6"] == 1.0
    assert meta["view_accuracy_limits_by_split"]["test"]["6"] == pytest.approx(1 / 3)
    # At test the rear names the class at chance: 10 classes, 2,000 test objects of the generator.
    agree = [synthetic.shortcut_class(c, 10, n, seed=3, test=True) == c for c in range(10) for n in range(200)]
    assert binomtest(sum(agree), len(agree), 0.1).pvalue > 0.01


def test_a_shortcut_agreement_fraction_is_recorded_and_holds_per_object(tmp_path):
    prepare_synthetic(tmp_path / "s", seed=3, workers=1, views_differ="shortcut", shortcut_agreement=0.5,
                      **{**TINY, "per_class": 12})
    meta = open_dataset(tmp_path / "s").meta
    assert meta["synthetic"]["shortcut_agreement"] == 0.5
    agree = _rear_agreement(tmp_path / "s", "train", 0.5) + _rear_agreement(tmp_path / "s", "val", 0.5)
    assert 0 < sum(agree) < len(agree)
    assert meta["shortcut_agreement_by_split"]["train"] == sum(_rear_agreement(tmp_path / "s", "train", 0.5)) / 24
    with pytest.raises(UserError, match="--shortcut-agreement applies to --views-differ shortcut only"):
        prepare_synthetic(tmp_path / "x", shortcut_agreement=0.5, **TINY)
    with pytest.raises(UserError, match=r"--shortcut-agreement must be in \[0, 1\]"):
        prepare_synthetic(tmp_path / "x", views_differ="shortcut", shortcut_agreement=1.5, **TINY)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cls", [1, 3])
def test_the_rear_view_shows_nothing_of_the_front_mark(monkeypatch, cls):
    """`information`: given the rear glyph, view 6 must not depend on the front mark. Odd classes' glyphs are
    never a rear glyph, so swapping one for another glyph changes the front alone: view 6 must stay pixel for
    pixel the same (the renderer scales each mesh by its extent, which a front mark must not set)."""
    from mmtm.loaders.prep.render import Renderer

    renderer = Renderer(32)
    try:
        names = synthetic.class_names(10)
        for obj in (1, 2, 3):
            before = renderer.render(*synthetic.make_mesh(cls, 10, obj, seed=10))
            for other in (5, 7):
                with monkeypatch.context() as m:
                    m.setitem(synthetic.GLYPHS, names[cls], synthetic.GLYPHS[names[other]])
                    after = renderer.render(*synthetic.make_mesh(cls, 10, obj, seed=10))
                assert (before[0] != after[0]).any()        # the front did change
                assert np.array_equal(before[6], after[6])  # the rear did not
    finally:
        renderer.release()


@pytest.mark.parametrize("cls", [0, 3])
def test_the_front_view_shows_nothing_of_the_shortcut(monkeypatch, cls):
    """`shortcut`: the rear mark is drawn at random at test, so view 0 must not depend on it: naming another class
    on the rear changes view 6 and leaves view 0 pixel for pixel the same (anchors fix the renderer's extent)."""
    from mmtm.loaders.prep.render import Renderer

    renderer = Renderer(32)
    try:
        for obj in (1, 2, 3):
            before = renderer.render(*synthetic.make_mesh(cls, 5, obj, seed=10, views_differ="shortcut", test=False))
            for other in {1, 4} - {cls}:
                with monkeypatch.context() as m:
                    m.setattr(synthetic, "shortcut_class", lambda *a, other=other, **k: other)
                    after = renderer.render(*synthetic.make_mesh(cls, 5, obj, seed=10, views_differ="shortcut",
                                                                 test=False))
                assert (before[6] != after[6]).any()        # the rear did change
                assert np.array_equal(before[0], after[0])  # the front did not
    finally:
        renderer.release()


def test_best_view_accuracy_is_the_best_rule_of_each_views_marks():
    names = synthetic.class_names(10)
    objects = [(c, o) for c in range(10) for o in range(1, 21)]
    best = synthetic.best_view_accuracy("information", 10, objects, seed=10)
    # Brute force from the marks drawn on the meshes: the best class for each rear glyph, counted.
    by_rear: dict[str, list[int]] = {}
    for c, o in objects:
        by_rear.setdefault(synthetic.marks(c, 10, o, seed=10)[1], []).append(c)
    expected = sum(max(cs.count(c) for c in set(cs)) for cs in by_rear.values()) / len(objects)
    assert best["6"] == pytest.approx(expected)
    assert abs(best["6"] - synthetic.view_accuracy_limits("information", 10)["6"]) < 0.1  # near the design's 0.40
    assert best["0"] == 1.0 and best["3"] is None
    assert synthetic.best_view_accuracy("ease", 10, objects, seed=10)["6"] == 1.0
    assert {synthetic.marks(c, 10, 1, seed=10)[0] for c in range(10)} == set(names)


def test_dataset_json_records_each_splits_best_view_accuracy(tmp_path):
    prepare_synthetic(tmp_path / "d", seed=3, workers=1, **(TINY | {"classes": 4, "per_class": 10}))
    ds = open_dataset(tmp_path / "d")
    best = ds.meta["best_view_accuracy"]
    assert set(best) == {"train", "val", "test"}
    for split, recorded in best.items():
        objects = [(synthetic.class_names(4).index(r.cls), int(r.object.rsplit("_", 1)[1])) for r in ds.rows(split)]
        assert recorded == synthetic.best_view_accuracy("information", 4, objects, seed=3)


def test_the_anchors_hold_every_mark_and_the_ease_variant_has_none(monkeypatch):
    for variant, extra in (("information", {}), ("shortcut", {"test": False})):
        vertices, faces = synthetic.make_mesh(3, 10, 1, seed=10, views_differ=variant, **extra)
        degenerate = (faces[:, 0] == faces[:, 1]) & (faces[:, 1] == faces[:, 2])
        assert degenerate.sum() == 8 and set(faces[degenerate, 0]) == set(range(len(vertices) - 8, len(vertices)))
    _, ease_faces = synthetic.make_mesh(3, 10, 1, seed=10, views_differ="ease")
    assert not ((ease_faces[:, 0] == ease_faces[:, 1]) & (ease_faces[:, 1] == ease_faces[:, 2])).any()
    monkeypatch.setattr(synthetic, "ANCHOR_MARGIN", (0.1, 0.05, 0.1))  # a box the front mark sticks out of: refused
    with pytest.raises(ValueError, match="beyond the anchors"):
        synthetic.make_mesh(3, 10, 1, seed=10)
