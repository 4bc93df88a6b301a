"""Read one mesh file into (vertices float32 [V,3], faces int64 [F,3]).

OFF is parsed here because ModelNet's files break the format in known ways (header glued to the counts,
`OFF490 518 0`; comments; blank lines; quads and n-gons; COFF colours). OBJ and PLY go through trimesh.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from mmtm.loaders.dataset import DatasetError

MESH_SUFFIXES = (".off", ".obj", ".ply")

# OFF, COFF, NOFF, CNOFF, STOFF, ... optionally followed (on the same line) by the counts.
_OFF_HEADER = re.compile(r"^(ST)?(C)?(N)?(4)?OFF(?P<rest>.*)$")


class MeshError(DatasetError):
    """An unreadable or malformed mesh file; the message names the file."""


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".off":
        vertices, faces = read_off(path)
    elif suffix in (".obj", ".ply"):
        vertices, faces = _read_trimesh(path)
    else:
        raise MeshError(f"{path}: unsupported mesh type {suffix!r}; expected one of {', '.join(MESH_SUFFIXES)}")
    _check(path, vertices, faces)
    return vertices, faces


def read_off(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise MeshError(f"{path}: cannot read OFF file ({e.__class__.__name__}: {e})") from None
    raw = text.splitlines()
    if "#" in text:
        raw = [line.split("#", 1)[0] for line in raw]
    numbers = [n for n, line in enumerate(raw) if line.strip()]  # 0-based indices of lines with content
    if not numbers:
        raise MeshError(f"{path}: empty file, not an OFF mesh")
    header = _OFF_HEADER.match(raw[numbers[0]].strip())
    if header is None:
        raise MeshError(f"{path}: line {numbers[0] + 1}: expected an OFF header, found {raw[numbers[0]].strip()!r}")
    pos = 1
    counts = header["rest"].split()
    if not counts:
        if len(numbers) < 2:
            raise MeshError(f"{path}: missing the vertex/face counts line")
        counts, pos = raw[numbers[1]].split(), 2
    try:
        num_v, num_f = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise MeshError(f"{path}: bad counts {' '.join(counts)!r}; expected `vertices faces edges`") from None
    if num_v < 0 or num_f < 0 or len(numbers) < pos + num_v + num_f:
        raise MeshError(f"{path}: header promises {num_v} vertices and {num_f} faces, "
                        f"the file has {len(numbers) - pos} data lines")
    vertex_lines = [(n + 1, raw[n]) for n in numbers[pos:pos + num_v]]
    face_lines = [(n + 1, raw[n]) for n in numbers[pos + num_v:pos + num_v + num_f]]
    return _off_vertices(path, vertex_lines), _off_faces(path, face_lines)


def _off_vertices(path: Path, lines: list[tuple[int, str]]) -> np.ndarray:
    # Fast path: exactly x y z on every line. COFF/NOFF append colours or normals: keep the first three.
    xyz = _all_numbers([line for _, line in lines], np.float64, 3 * len(lines))
    if xyz is None:
        try:
            xyz = np.array([line.split()[:3] for _, line in lines], dtype=np.float64)
        except ValueError:
            xyz = None
        if xyz is None or xyz.shape != (len(lines), 3):
            bad = next((n for n, line in lines if len(line.split()) < 3), lines[0][0] if lines else 0)
            raise MeshError(f"{path}: line {bad}: a vertex line must start with three numbers") from None
    return xyz.reshape(-1, 3).astype(np.float32)


def _off_faces(path: Path, lines: list[tuple[int, str]]) -> np.ndarray:
    # Fast path: every face a plain triangle `3 a b c`, as in most of ModelNet.
    flat = _all_numbers([line for _, line in lines], np.int64, 4 * len(lines))
    if flat is not None and (flat[::4] == 3).all():
        return flat.reshape(-1, 4)[:, 1:]
    triangles: list[tuple[int, int, int]] = []
    for n, line in lines:
        toks = line.split()
        try:
            k = int(toks[0])
            poly = [int(t) for t in toks[1:1 + k]]
        except ValueError:
            raise MeshError(f"{path}: line {n}: face is not integers: {line.strip()!r}") from None
        if k < 3 or len(poly) != k:
            raise MeshError(f"{path}: line {n}: face needs at least 3 vertex indices and exactly as many as it "
                            f"announces ({line.strip()!r})")
        # Quads and n-gons become fans; tokens after the k indices are face colours, ignored.
        triangles.extend((poly[0], poly[i], poly[i + 1]) for i in range(1, k - 1))
    return np.array(triangles, dtype=np.int64).reshape(-1, 3)


def _all_numbers(lines: list[str], dtype, count: int) -> np.ndarray | None:
    """Every token of `lines` parsed in C, or None unless that gives exactly `count` numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy only warns when it stops at a non-number
        try:
            values = np.fromstring(" ".join(lines), dtype=dtype, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    return values if values.size == count else None


def _read_trimesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many unrelated types for a bad file
        raise MeshError(f"{path}: cannot read mesh ({e.__class__.__name__}: {e})") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"{path}: no triangle mesh in the file")
    return np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)


def _check(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    if len(faces) == 0:
        raise MeshError(f"{path}: mesh has no faces")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"{path}: a face refers to a vertex index outside 0..{len(vertices) - 1}")
    if not np.isfinite(vertices).all():
        raise MeshError(f"{path}: vertex coordinates include NaN or infinity")
