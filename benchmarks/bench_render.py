"""Measure MVCNN rendering throughput and project the time to prepare ModelNet40 from its meshes.

    python benchmarks/bench_render.py [--json render.json] [--workers 2] [--meshes 48] [--skip-synthetic]

1. render: one process, one Renderer, a ~5k-face mesh at 224 px: render + JPEG encode, views/s.
2. prep: `prepare()` on a temporary tree of OFF copies of that mesh with --workers processes: the whole path
   (parse, render, encode, write, split files), the number the projection uses.
3. ingest: `prepare()` on an MVCNN render tree (224 px PNG → JPEG), for comparison.
4. synthetic: `prepare_synthetic()` at its defaults.
Projection: ModelNet40's 12,311 meshes × 12 views at the prep rate, against the 15-minute target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

import numpy as np  # noqa: E402

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


def bench_render(vertices: np.ndarray, faces: np.ndarray, repeats: int) -> dict:
    from loaders.render import Renderer, encode

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


def bench_prep(vertices: np.ndarray, faces: np.ndarray, meshes: int, workers: int) -> dict:
    from loaders.prep import prepare

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


def bench_ingest(vertices: np.ndarray, faces: np.ndarray, objects: int, workers: int) -> dict:
    from PIL import Image

    from loaders.prep import prepare
    from loaders.render import Renderer
    from loaders.renders import render_filename

    renderer = Renderer(IMAGE_SIZE)
    views = renderer.render(vertices, faces)
    renderer.release()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(objects):
            folder = Path(tmp, "src", f"class{i % 4}", "test" if i % 5 == 4 else "train")
            folder.mkdir(parents=True, exist_ok=True)
            for v, view in enumerate(views):
                Image.fromarray(view).save(folder / render_filename(f"class{i % 4}_{i:04d}", v))
        summary = prepare(Path(tmp, "src"), Path(tmp, "out"), image_size=IMAGE_SIZE, workers=workers, progress=False)
    return {"objects": objects, "workers": workers, "seconds": summary["seconds"],
            "views_per_s": summary["views_per_s"]}


def bench_synthetic(workers: int) -> dict:
    from loaders import synthetic
    from loaders.prep import prepare_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        summary = prepare_synthetic(Path(tmp, "out"), workers=workers, progress=False)
    return {"classes": synthetic.DEFAULT_CLASSES, "per_class": synthetic.DEFAULT_PER_CLASS,
            "image_size": synthetic.DEFAULT_IMAGE_SIZE, "workers": workers, "seconds": summary["seconds"],
            "views_per_s": summary["views_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--meshes", type=int, default=96, help="OFF copies in the prep and ingest benchmarks")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-synthetic", action="store_true")
    a = ap.parse_args()

    vertices, faces = bench_mesh()
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS")}}
    result["render"] = bench_render(vertices, faces, a.repeats)
    print(f"render  1 process : {result['render']['views_per_s']:7.1f} views/s  ({len(faces)} faces, "
          f"{IMAGE_SIZE} px: {result['render']['ms_per_mesh_render']:.1f} ms render + "
          f"{result['render']['ms_per_mesh_jpeg']:.1f} ms JPEG per 12 views)")
    result["prep"] = bench_prep(vertices, faces, a.meshes, a.workers)
    rate = result["prep"]["views_per_s"]
    print(f"prep    {a.workers} workers : {rate:7.1f} views/s  (OFF parse + render + JPEG + write, {a.meshes} meshes)")
    projected = MODELNET40_MESHES * 12 / rate
    result["projection"] = {"meshes": MODELNET40_MESHES, "views": MODELNET40_MESHES * 12, "workers": a.workers,
                            "seconds": round(projected, 1), "target_s": TARGET_S, "meets_target": projected <= TARGET_S}
    print(f"ModelNet40 projection: {MODELNET40_MESHES} meshes × 12 views ≈ {projected / 60:.1f} min with "
          f"{a.workers} workers (target {TARGET_S // 60} min: {'met' if projected <= TARGET_S else 'NOT met'}; "
          f"assumes ~{len(faces)} faces per mesh)")
    result["ingest"] = bench_ingest(vertices, faces, a.meshes, a.workers)
    print(f"ingest  {a.workers} workers : {result['ingest']['views_per_s']:7.1f} views/s  (MVCNN PNG renders → JPEG)")
    if not a.skip_synthetic:
        result["synthetic"] = bench_synthetic(a.workers)
        s = result["synthetic"]
        print(f"synthetic defaults : {s['seconds']:.1f} s for {s['classes'] * s['per_class']} objects "
              f"({s['views_per_s']:.0f} views/s, {s['image_size']} px)")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
