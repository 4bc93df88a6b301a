"""The MVCNN renderer: 12 distinct lit views, cameras turning 30° at a time, the view-0 = front convention."""
from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from mmtm.loaders.prep.render import Renderer, encode, fit_unit_sphere

SIZE = 32


@pytest.fixture(scope="module")
def renderer():
    r = Renderer(SIZE)
    yield r
    r.release()


def asymmetric_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A box with a post at +x and a cone sticking out towards -y: no rotational or mirror symmetry."""
    from trimesh.transformations import rotation_matrix, translation_matrix

    cone_pose = translation_matrix([-0.2, -0.3, 0.2]) @ rotation_matrix(np.pi / 2, [1, 0, 0])
    parts = [trimesh.creation.box(extents=[1.0, 0.6, 1.2]),
             trimesh.creation.cylinder(radius=0.1, height=1.6, transform=translation_matrix([0.65, 0.1, 0.2])),
             trimesh.creation.cone(radius=0.25, height=0.6, transform=cone_pose)]
    mesh = trimesh.util.concatenate(parts)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_twelve_distinct_lit_views(renderer):
    views = renderer.render(*asymmetric_mesh())
    assert views.shape == (12, SIZE, SIZE) and views.dtype == np.uint8
    for k, view in enumerate(views):
        assert (view > 20).mean() > 0.1, f"view {k} is (nearly) blank"
        assert view[0, 0] == 0 and view[-1, -1] == 0, "background must be black"
        assert len(np.unique(view)) > 10, f"view {k} is not shaded"
    for i in range(12):
        for j in range(i + 1, 12):
            assert np.abs(views[i].astype(int) - views[j]).mean() > 2, f"views {i} and {j} look the same"


def test_next_camera_sees_the_mesh_turned_back_30_degrees(renderer):
    vertices, faces = asymmetric_mesh()
    unit = fit_unit_sphere(vertices)
    views = renderer.render_normalized(unit, faces).astype(int)
    turned = renderer.render_normalized((unit @ rotation_z(-30).T).astype(np.float32), faces).astype(int)
    for k in range(11):
        same = np.abs(views[k + 1] - turned[k]).mean()
        other = np.abs(views[k] - turned[k]).mean()
        assert same < 1.0 and other > 5 * same, (k, same, other)


def test_view0_is_front_and_view6_is_rear(renderer):
    # A post at +x beside a small cube at the origin: seen from the front (-y, view 0) the post is on the
    # right, from the rear (view 6) on the left.
    post = trimesh.util.concatenate([trimesh.creation.cylinder(radius=0.1, height=1.6).apply_translation([0.7, 0, 0]),
                                     trimesh.creation.box(extents=[0.1, 0.1, 0.1])])
    views = renderer.render(post.vertices, post.faces)

    def centroid_x(view):
        mask = view > 0
        return (mask * np.arange(SIZE)).sum() / mask.sum()

    assert centroid_x(views[0]) > SIZE / 2 + 2 and centroid_x(views[6]) < SIZE / 2 - 2


def test_up_axis_option(renderer):
    vertices, faces = asymmetric_mesh()
    z_up = renderer.render(vertices, faces, up="z")
    # The same object stored y-up: (x, y, z) → (x, z, -y) puts the old +z on +y.
    y_up_vertices = vertices[:, [0, 2, 1]] * np.array([1, 1, -1])
    y_up = renderer.render(y_up_vertices, faces, up="y")
    assert np.abs(z_up.astype(int) - y_up).mean() < 1.0
    with pytest.raises(ValueError):
        fit_unit_sphere(vertices, up="w")


def test_fit_unit_sphere():
    vertices, _ = asymmetric_mesh()
    unit = fit_unit_sphere(vertices * 7 + 3)
    assert np.isclose(np.linalg.norm(unit, axis=1).max(), 1.0, atol=1e-5)
    assert np.allclose((unit.min(0) + unit.max(0)) / 2, 0, atol=1e-5)


def test_renderer_is_reusable_and_deterministic(renderer):
    vertices, faces = asymmetric_mesh()
    first = renderer.render(vertices, faces)
    box = trimesh.creation.box()
    renderer.render(box.vertices, box.faces)
    assert np.array_equal(first, renderer.render(vertices, faces))


@pytest.mark.parametrize("encoding,fmt", [("jpeg", "JPEG"), ("png", "PNG")])
def test_encode(encoding, fmt):
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[8:24, 8:24] = 200
    with Image.open(io.BytesIO(encode(image, encoding))) as im:
        assert im.format == fmt and im.size == (SIZE, SIZE)
        decoded = np.asarray(im.convert("L")).astype(int)
    assert np.abs(decoded - image).mean() < 3


def test_a_vertex_no_face_uses_changes_nothing(renderer):
    """ModelNet's lrfurn_armchair has a stray vertex at z = 2.43, the chair within ±0.5: the object must keep its size
    and place in every view."""
    vertices, faces = asymmetric_mesh()
    stray = np.vstack([vertices, [[0.0, 0.0, 2.43]]])
    assert np.array_equal(renderer.render(stray, faces), renderer.render(vertices, faces))
