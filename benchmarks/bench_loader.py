"""Measure the two-view loaders on a prepared dataset and write the numbers as JSON.

    python benchmarks/bench_loader.py --data DATA [--out loader.json] [--batch-size 32] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loaders.bench import bench_loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--out", default="-", help="JSON file to write ('-': stdout)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--views", type=int, nargs=2, default=(0, 6))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--max-batches", type=int, default=None)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    result = bench_loader(a.data, batch_size=a.batch_size, threads=a.threads, views=tuple(a.views), split=a.split,
                          repeats=a.repeats, warmup_batches=a.warmup_batches, max_batches=a.max_batches,
                          device=a.device)
    text = json.dumps(result, indent=2) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        Path(a.out).write_text(text)
        for name, r in result["results"].items():
            print(f"{name:7s} {r['images_per_s']:8.0f} img/s  {r['cpu_ms_per_image']:.3f} CPU ms/img")


if __name__ == "__main__":
    main()
