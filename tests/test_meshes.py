"""Mesh reading: ModelNet's OFF quirks, OBJ/PLY through trimesh, and clear errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest

from mmtm.loaders.prep.meshes import MeshError, read_mesh
from mmtm.loaders.errors import UserError

SQUARE = "0 0 0\n1 0 0\n1 1 0\n0 1 0\n"


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plain_off_triangles(tmp_path):
    v, f = read_mesh(write(tmp_path, "a.off", "OFF\n4 2 0\n" + SQUARE + "3 0 1 2\n3 0 2 3\n"))
    assert v.dtype == np.float32 and v.shape == (4, 3)
    assert f.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_header_glued_to_counts(tmp_path):
    v, f = read_mesh(write(tmp_path, "glued.off", "OFF4 1 0\n" + SQUARE + "4 0 1 2 3\n"))
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3]]


def test_comments_blank_lines_and_counts_on_header_line(tmp_path):
    text = "# made by hand\nOFF 4 1 0  # counts here\n\n0 0 0 # first\n1 0 0\n\n1 1 0\n0 1 0\n# faces\n3 0 1 2\n"
    v, f = read_mesh(write(tmp_path, "c.off", text))
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2]]


def test_quads_and_ngons_become_fans(tmp_path):
    text = "OFF\n5 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0.5 2 0\n4 0 1 2 3\n5 0 1 2 4 3\n"
    _, f = read_mesh(write(tmp_path, "q.off", text))
    assert f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 4], [0, 4, 3]]


def test_coff_colours_are_ignored(tmp_path):
    text = "COFF\n3 1 0\n0 0 0 255 0 0 255\n1 0 0 0 255 0 255\n0 1 0 0 0 255 255\n3 0 1 2 10 20 30\n"
    v, f = read_mesh(write(tmp_path, "col.off", text))
    assert v.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]] and f.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("text", [
    "",                                       # empty
    "PLY\n3 1 0\n",                           # not an OFF header
    "OFF\n4 2 0\n" + SQUARE + "3 0 1 2\n",    # fewer faces than announced
    "OFF\n3 1 0\n0 0\n1 0 0\n0 1 0\n3 0 1 2\n",  # a vertex with two coordinates
    "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n",  # face index out of range
    "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n",    # a face with two vertices
    "OFF\nx y z\n",                                # counts are not numbers
])
def test_malformed_off_names_the_file(tmp_path, text):
    path = write(tmp_path, "bad_0001.off", text)
    with pytest.raises(MeshError, match="bad_0001.off") as info:
        read_mesh(path)
    assert isinstance(info.value, UserError)


def test_binary_garbage_is_a_mesh_error(tmp_path):
    path = tmp_path / "junk.off"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(MeshError, match="junk.off"):
        read_mesh(path)


def test_obj_and_ply_via_trimesh(tmp_path):
    import trimesh

    box = trimesh.creation.box()
    for suffix in ("obj", "ply"):
        path = tmp_path / f"box.{suffix}"
        box.export(path)
        v, f = read_mesh(path)
        assert f.shape == (12, 3) and np.allclose(np.abs(v).max(), 0.5)


def test_unreadable_obj_and_unknown_suffix(tmp_path):
    with pytest.raises(MeshError, match="broken.obj"):
        read_mesh(write(tmp_path, "broken.obj", "this is not an obj file\n"))
    with pytest.raises(MeshError, match="model.stl"):
        read_mesh(write(tmp_path, "model.stl", "solid x\n"))
