"""What each training policy costs against vanilla, side by side in one process:
`python3 benchmarks/policy_cost.py [--save FILE] [--repeats N]`.

Every policy trains the same small run (the built-in `shortcut` set, 5 classes × 120 objects at 32 px; the
`shortcut` preset, 6 epochs of 12 steps) `--repeats` times, the policies interleaved in each repeat so that a busy
machine slows them alike; the figure is each policy's median time of `mmtm.fit` (its own epochs, validation
included) over vanilla's. `umt` is taught by two single-view runs trained once before the timing, which it shares
with the baselines in a comparison. Loading and validation weigh more in a run this small than in a large one, so a
policy's extra passes show smaller here than on a GPU run of the paper preset.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mmtm import fit, prepare_synthetic, resolve
from mmtm.training.registry import POLICIES

SIZE = {"epochs": 6, "device": "cpu"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", type=Path, help="Write the results as JSON here.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="policy-cost-") as tmp:
        data = str(Path(tmp) / "data")
        prepare_synthetic(data, classes=5, per_class=120, image_size=32, views_differ="shortcut", workers=1,
                          progress=False)
        teachers = []
        for slot in (0, 1):  # single_view: the first or second of the views
            out = str(Path(tmp) / f"single-view{slot}")
            fit(resolve("shortcut", data=data, out=out, single_view=slot, **SIZE))
            teachers.append(out)
        seconds: dict[str, list[float]] = {name: [] for name in POLICIES}
        for repeat in range(args.repeats):
            for name in POLICIES:
                extra = {"umt_teachers": ",".join(teachers)} if name == "umt" else {}
                cfg = resolve("shortcut", data=data, out=str(Path(tmp) / f"{name}-{repeat}"), policy=name, **SIZE,
                              **extra)
                started = time.perf_counter()
                fit(cfg)
                seconds[name].append(time.perf_counter() - started)
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {seconds[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    results = {name: {"median_s": round(m, 2), "x_vanilla": round(m / medians["vanilla"], 2),
                      "seconds": [round(s, 2) for s in seconds[name]]} for name, m in medians.items()}
    print("| policy | median s | × vanilla |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['median_s']} | {r['x_vanilla']} |")
    if args.save:
        args.save.write_text(json.dumps({"results": results, "config": {**SIZE, "repeats": args.repeats,
                                                                          "preset": "shortcut"}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
