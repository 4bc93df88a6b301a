"""Rendering throughput (`mmtm bench render`) and the projected time to prepare ModelNet40 from its meshes.

1. render: one process, one Renderer, a ~5k-face mesh at 224 px: render + JPEG encode, views/s.
2. prep: `prepare()` on a temporary tree of OFF copies of that mesh with --workers processes: the whole path
   (parse, render, encode, write, split files), the number the projection uses.
3. ingest: `prepare()` on an MVCNN render tree (224 px PNG → JPEG), for comparison.
4. synthetic: `prepare_synthetic()` at its defaults.
Projection: ModelNet40's 12,311 meshes × 12 views at the prep rate, against the 15-minute target.
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mmtm.loaders.errors import UserError
from mmtm.loaders.prep import synthetic
from mmtm.loaders.prep.build import prepare, prepare_synthetic
from mmtm.loaders.prep.mvcnn_tree import render_filename
from mmtm.loaders.prep.render import Renderer, encode

MODELNET40_MESHES = 12_311
TARGET_S = 15 * 60
IMAGE_SIZE = 224


def bench_mesh() -> tuple[np.ndarray, np.ndarray]:
    """An icosphere (5,120 faces) pushed into an irregular bumpy blob, so no view is trivial."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=4)
    v = sphere.vertices
    bumps = 1 + 0.25 * np.sin(5 * v[:, 0]) * np.cos(3 * v[:, 1]) + 0.3 * (v[:, 2] > 0.6)
    return (v * bumps[:, None] * [1.0, 0.7, 1.3]).astype(np.float32), np.asarray(sphere.faces)


def _spawned(fn, *args):
    """fn(*args) in a fresh spawned process: a GL context in this process would make a later `import torchvision`
    here crash (torch 2.14), as `prep` also knows (it renders only in spawned workers)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _render(vertices: np.ndarray, faces: np.ndarray, repeats: int) -> dict:
    """One process, one Renderer (run through `_spawned`)."""
    renderer = Renderer(IMAGE_SIZE)
    renderer.render(vertices, faces)  # warm-up: shader compile, first allocations
    render_s, encode_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        views = renderer.render(vertices, faces)
        t1 = time.perf_counter()
        for view in views:
            encode(view, "jpeg")
        render_s.append(t1 - t0)
        encode_s.append(time.perf_counter() - t1)
    renderer.release()
    r, e = statistics.median(render_s), statistics.median(encode_s)
    return {"faces": int(len(faces)), "image_size": IMAGE_SIZE, "ms_per_mesh_render": round(1000 * r, 2),
            "ms_per_mesh_jpeg": round(1000 * e, 2), "views_per_s": round(12 / (r + e), 1)}


def _prep(vertices: np.ndarray, faces: np.ndarray, meshes: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # ModelNet40-style tree; the header glued to the counts as in many of its files.
        lines = [f"OFF{len(vertices)} {len(faces)} 0"] + [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
        lines += [f"3 {a} {b} {c}" for a, b, c in faces]
        text = "\n".join(lines) + "\n"
        for i in range(meshes):
            split = "test" if i % 5 == 4 else "train"
            folder = Path(tmp, "src", f"class{i % 4}", split)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"class{i % 4}_{i:04d}.off").write_text(text)
        summary = prepare(Path(tmp, "src"), Path(tmp, "out"), image_size=IMAGE_SIZE, workers=workers, progress=False)
    return {"meshes": meshes, "workers": workers, "seconds": summary["seconds"], "views_per_s": summary["views_per_s"]}


def _views(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    renderer = Renderer(IMAGE_SIZE)
    views = renderer.render(vertices, faces)
    renderer.release()
    return views


def _ingest(vertices: np.ndarray, faces: np.ndarray, objects: int, workers: int) -> dict:
    from PIL import Image

    views = _spawned(_views, vertices, faces)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(objects):
            folder = Path(tmp, "src", f"class{i % 4}", "test" if i % 5 == 4 else "train")
            folder.mkdir(parents=True, exist_ok=True)
            for v, view in enumerate(views):
                Image.fromarray(view).save(folder / render_filename(f"class{i % 4}_{i:04d}", v))
        summary = prepare(Path(tmp, "src"), Path(tmp, "out"), image_size=IMAGE_SIZE, workers=workers, progress=False)
    return {"objects": objects, "workers": workers, "seconds": summary["seconds"],
            "views_per_s": summary["views_per_s"]}


def _synthetic(workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = prepare_synthetic(Path(tmp, "out"), workers=workers, progress=False)
    return {"classes": synthetic.DEFAULT_CLASSES, "per_class": synthetic.DEFAULT_PER_CLASS,
            "image_size": synthetic.DEFAULT_IMAGE_SIZE, "workers": workers, "seconds": summary["seconds"],
            "views_per_s": summary["views_per_s"]}


def bench_render(*, workers: int = 2, meshes: int = 96, repeats: int = 10, synthetic_set: bool = True) -> dict:
    """{"render", "prep", "projection", "ingest"[, "synthetic"], "machine"}: views/s of each stage."""
    if workers < 1 or meshes < 5 or repeats < 1:
        raise UserError("--workers and --repeats must be at least 1, --meshes at least 5")
    vertices, faces = bench_mesh()
    result: dict = {"render": _spawned(_render, vertices, faces, repeats),
                    "prep": _prep(vertices, faces, meshes, workers)}
    projected = MODELNET40_MESHES * 12 / result["prep"]["views_per_s"]
    result["projection"] = {"meshes": MODELNET40_MESHES, "views": MODELNET40_MESHES * 12, "workers": workers,
                            "faces_per_mesh": int(len(faces)), "seconds": round(projected, 1), "target_s": TARGET_S,
                            "meets_target": projected <= TARGET_S}
    result["ingest"] = _ingest(vertices, faces, meshes, workers)
    if synthetic_set:
        result["synthetic"] = _synthetic(workers)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS")}
    return result
