"""The whole GPU acceptance in one command, judged: `make gpu-check`, or `python benchmarks/gpu_check.py` on a machine
where torch, DALI and the project's few runtime packages import (nothing is installed, nothing is downloaded).

Parts, each with its own time limit; a part that fails or runs out of time is recorded as such and the rest runs:
  data     a 224-px two-view dataset made with PIL in --data, unless one is there (no renderer needed)
  info     `mmtm info --json` (stops here if torch sees no GPU)
  pytest   tests/test_cuda.py and tests/test_cuda_graphs.py
  graphs   `mmtm train --policy random` (every step mode, float32, DALI loader with source workers) with
           `--cuda-graphs off` and `auto`, then `eval-cur`: losses and d_speed compared step by step, the graph
           steps per mode from epochs.csv, capture notes, and DALI pipeline builds per loader
  loader   `mmtm bench loader` (batch 32, 4 threads)
  train    `mmtm bench train --preset paper --batch-size 8,64` (end to end, compute only, host syncs per step)
  pack     `mmtm bench pack --k 1,2,4,8`
Only the commands' stdout is parsed (libraries print on stderr). gpu-check.json (with gpu-loader.json,
gpu-train.json, gpu-pack.json) is rewritten after every part, so a check cut short keeps what it measured; at the
end its `verdicts` block gives, per target, the target, the measured value and whether it passes. The exit status
is 0 only when every verdict passes (1 otherwise; 2 when the check cannot start).

--dry-run runs every part up to the first CUDA call (the imports, the dataset, the plan of commands) and writes
gpu-check.json with the plan: it runs on any CPU machine (CI does).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MMTM = [sys.executable, "-c", "from mmtm.cli.app import main; main()"]  # works installed or from a bare checkout
PARTS = ("pytest", "graphs", "loader", "train", "pack")
NEEDED = ("torch", "torchvision", "nvidia.dali", "typer", "rich", "numpy", "PIL", "scipy", "pytest")
LIMITS = {"info": 60, "pytest": 300, "graphs": 100, "loader": 60, "train": 200, "pack": 200}  # seconds
CAPTURE_NOTE = "note: CUDA graphs off"
# `mmtm ARGS` with every DALI pipeline build counted per loader: the counts are stdout's last line.
COUNTED_MMTM = [sys.executable, "-c", """
import json, sys
from collections import Counter
from mmtm.loaders.dali_backend import DaliTwoViewLoader
builds, build = Counter(), DaliTwoViewLoader._build
def counted(self, first_epoch):
    builds[f"{self.split} train={self.train} #{id(self)}"] += 1
    return build(self, first_epoch)
DaliTwoViewLoader._build = counted
from mmtm.cli.app import main
try:
    main()
finally:
    print(json.dumps({"pipeline_builds": dict(builds)}), flush=True)
"""]


def targets() -> dict[str, dict]:
    """The project's targets on one GPU (paper preset, bf16, 224 px, DALI): `measured` `compare` `target` passes;
    `parts`: what measures it."""
    return {"b8_end_to_end_samples_per_s": {"compare": ">=", "target": 1600, "parts": ["train"]},
            "b64_end_to_end_samples_per_s": {"compare": ">=", "target": 4800, "parts": ["train"]},
            # the lower of batch 8 and 64
            "end_to_end_over_compute": {"compare": ">=", "target": 0.95, "parts": ["train"]},
            # the higher of batch 8 and 64, the loader included
            "host_syncs_per_step": {"compare": "<=", "target": 1, "parts": ["train"]},
            # per step, float32
            "graph_vs_eager_max_rel_diff": {"compare": "<=", "target": 1e-5, "parts": ["graphs"]},
            # failed captures, capture notes, and graph-on modes that never replayed
            "capture_fallbacks": {"compare": "<=", "target": 0, "parts": ["train", "graphs"]},
            "pipeline_builds_per_loader": {"compare": "<=", "target": 1, "parts": ["graphs"]},
            "gpu_tests_exit_status": {"compare": "<=", "target": 0, "parts": ["pytest"]}}


def run(args: list[str], timeout: float) -> dict:
    """Run a command from the project root: exit status, seconds, its stdout (parsed by the caller) and the tail of
    its stderr."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code = "timeout"
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    seconds = round(time.perf_counter() - start, 1)
    shown = args[3:] if args[1:2] == ["-c"] else args
    print(f"[{seconds:6.1f} s] exit {code}: {' '.join(shown)}", flush=True)
    return {"command": " ".join(shown), "exit": code, "seconds": seconds, "stdout": out, "stderr_tail": err[-3000:]}


def last_json(text: str):
    """stdout as one JSON object, else its last line that is one, else None."""
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return whole
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def trimmed(result: dict) -> dict:
    """A run's record for the JSON: the tail of stdout, not all of it."""
    return {**result, "stdout": result["stdout"][-3000:]}


def make_dataset(root: Path, image_size: int, per_class: int, classes: int = 10) -> None:
    """A prepared dataset (loaders.dataset's layout) of PIL-drawn objects, views 0 and 6 only (the ones the check
    trains on): per class a coloured shape, per object its place and size, per view its lighting. Training on it
    means nothing; decoding it costs about what a rendered view costs."""
    import random

    from PIL import Image, ImageDraw

    from mmtm.loaders.dataset import Row, view_filename, write_meta, write_split

    rng = random.Random(0)
    names = [f"c{c}" for c in range(classes)]
    split_counts = {"train": per_class - 2 * (per_class // 6), "val": per_class // 6, "test": per_class // 6}
    tmp = root.with_name(root.name + ".partial")
    (tmp / "splits").mkdir(parents=True)
    for split, count in split_counts.items():
        rows = []
        for k in range(count):
            for label, cls in enumerate(names):
                obj = f"{cls}_{split}_{k:04d}"
                folder = tmp / "images" / cls / obj
                folder.mkdir(parents=True)
                cx, cy = (rng.uniform(0.3, 0.7) * image_size for _ in range(2))
                r = rng.uniform(0.15, 0.3) * image_size
                for view in (0, 6):
                    shade = 40 + 12 * view
                    img = Image.new("RGB", (image_size, image_size), (shade, shade + 10, shade + 20))
                    draw = ImageDraw.Draw(img)
                    colour = ((50 + 20 * label) % 256, (200 - 15 * label) % 256, (90 + 35 * label) % 256)
                    box = [cx - r, cy - r * (0.6 + 0.1 * (label % 4)), cx + r, cy + r]
                    (draw.ellipse if label % 2 else draw.rectangle)(box, fill=colour, outline=(255, 255, 255))
                    for i in range(8):
                        draw.line([(0, i * image_size // 8), (image_size, (i + view) * image_size // 8)],
                                  fill=(shade + 30, shade, shade), width=2)
                    img.save(folder / view_filename(view, "jpeg"), quality=90)
                rows.append(Row(len(rows), obj, cls, label, f"images/{cls}/{obj}"))
        write_split(tmp / "splits" / f"{split}.csv", rows)
    write_meta(tmp, classes=names, image_size=image_size, encoding="jpeg", source="gpu-check",
               counts={s: n * classes for s, n in split_counts.items()}, val_fraction=0.0, split_seed=0)
    tmp.rename(root)


def steps_of(run_dir: Path) -> list[dict]:
    with open(run_dir / "steps.csv", newline="") as f:
        return list(csv.DictReader(f))


def epochs_of(run_dir: Path) -> list[dict]:
    with open(run_dir / "epochs.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_args(data: str, out: Path, device: str, graphs: str) -> list[str]:
    return ["train", "--data", data, "--out", str(out), "--preset", "demo", "--policy", "random", "--warmup-epochs",
            "0", "--epochs", "2", "--batch-size", "8", "--amp", "off", "--loader", "dali", "--cuda-graphs", graphs,
            "--device", device]


def graph_vs_eager(data: str, work: Path, device: str, timeout: float) -> dict:
    """A short fp32 run of the random policy (every step mode) with graphs off and on, whole epochs through the DALI
    loader with its source workers: step losses and d_speed compared, graph steps per mode, capture notes, DALI
    pipeline builds per loader, and eval-cur's accuracies compared."""
    parts, runs, builds, notes = [], {}, {}, 0
    for graphs in ("off", "auto"):
        out = work / f"graphs-{graphs}"
        trained = run([*COUNTED_MMTM, *train_args(data, out, device, graphs)], timeout)
        builds[graphs] = (last_json(trained["stdout"]) or {}).get("pipeline_builds")
        notes += trained["stderr_tail"].count(CAPTURE_NOTE)
        parts += [trimmed(trained), trimmed(run([*MMTM, "eval-cur", str(out), "--checkpoint", "last", "--device",
                                                 device], timeout))]
        runs[graphs] = out
    result: dict = {"parts": parts, "pipeline_builds": builds, "capture_notes": notes}
    if any(p["exit"] != 0 for p in parts):
        return {"ok": False, **result}
    a, b = steps_of(runs["off"]), steps_of(runs["auto"])
    rel = max(abs(float(x[k]) - float(y[k])) / max(abs(float(x[k])), 1e-12)
              for x, y in zip(a, b) for k in ("loss", "d_speed") if x[k] != "nan")
    graph_steps = {m: sum(int(e[f"{m}_graph_steps"]) for e in epochs_of(runs["auto"]))
                   for m in ("regular", "rebalance_m0", "rebalance_m1")}
    cur = [json.loads((runs[g] / "cur-last.json").read_text()) for g in ("off", "auto")]
    return {"ok": len(a) == len(b) and [s["mode"] for s in a] == [s["mode"] for s in b],
            "modes": sorted({s["mode"] for s in a}), "steps": len(a), "max_rel_diff_loss_d_speed": rel,
            "graph_steps": graph_steps,
            "cur_equal": all(cur[0][k] == cur[1][k] for k in ("acc", "acc_m0", "acc_m1", "d_util")), **result}


def bench_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def verdicts(record: dict, out: Path, skipped: list[str]) -> dict:
    """Each target whose parts ran, with what was measured (None when a part did not produce it) and whether it
    passes; the targets of skipped parts are listed in `not_judged`."""
    train = bench_json(out / "gpu-train.json") if "bench_train" in record else None
    graph_entries = {e["batch_size"]: e for e in (train or {}).get("results", []) if e["cuda_graphs"]}
    graphs = record.get("graph_vs_eager_cli", {})
    pack = bench_json(out / "gpu-pack.json") if "bench_pack" in record else None

    def figure(batch: int, key: str):
        return graph_entries[batch][key] if batch in graph_entries else None

    pair = [figure(b, "end_to_end_over_compute") for b in (8, 64)]
    syncs = [figure(b, "host_syncs_per_step") for b in (8, 64)]
    fallbacks = None
    if train is not None and "graph_steps" in graphs:
        failed = [e for e in train["results"] if e["cuda_graphs"] and e["capture_failed"]]
        failed += [s for r in (pack or {}).get("results", []) for s in r["per_run_steps"] if s["capture_failed"]]
        never = [m for m, n in graphs["graph_steps"].items() if n == 0]  # graphs on, yet a mode never replayed
        fallbacks = len(failed) + graphs["capture_notes"] + len(never)
    builds = [n for run in (graphs.get("pipeline_builds") or {}).values() for n in (run or {}).values()]
    rel = graphs.get("max_rel_diff_loss_d_speed") if graphs.get("ok") else None
    measured = {"b8_end_to_end_samples_per_s": figure(8, "end_to_end_samples_per_s"),
                "b64_end_to_end_samples_per_s": figure(64, "end_to_end_samples_per_s"),
                "end_to_end_over_compute": min(pair) if None not in pair else None,
                "host_syncs_per_step": max(syncs) if None not in syncs else None,
                "graph_vs_eager_max_rel_diff": rel, "capture_fallbacks": fallbacks,
                "pipeline_builds_per_loader": max(builds) if builds else None,
                "gpu_tests_exit_status": record.get("pytest", {}).get("exit")}
    result: dict = {}
    for name, t in targets().items():
        if set(t["parts"]) & set(skipped):
            result.setdefault("not_judged", []).append(name)
            continue
        value = measured[name]
        ok = isinstance(value, (int, float)) and (value >= t["target"] if t["compare"] == ">=" else
                                                  value <= t["target"])
        result[name] = {**t, "measured": value, "pass": ok}
    return result


def missing_packages() -> list[str]:
    """The packages the check needs that do not import (an import makes no CUDA call)."""
    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - absent, or present but broken: either way it cannot run
            missing.append(name)
    return missing


def plan(data: str, out: Path, device: str, quick: bool) -> dict[str, list[list[str]]]:
    """The commands of each part."""
    reps = ["--repeats", "1"] if quick else []
    steps = ["--steps", "3"] if quick else []
    work = Path("WORK")
    return {
        "info": [["info", "--json"]],
        "pytest": [["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py", "tests/test_cuda_graphs.py"]],
        "graphs": [train_args(data, work / f"graphs-{g}", device, g) for g in ("off", "auto")],
        "loader": [["bench", "loader", "--data", data, "--device", device, "--batch-size", "32",
                    "--loader-threads", "4", *reps, "--save", str(out / "gpu-loader.json")]],
        "train": [["bench", "train", "--data", data, "--device", device, "--preset", "paper", "--batch-size", "8,64",
                   *steps, "--save", str(out / "gpu-train.json")]],
        "pack": [["bench", "pack", "--data", data, "--device", device, "--preset", "paper", "--batch-size", "8",
                  "--k", "1,2" if quick else "1,2,4,8", *steps, "--save", str(out / "gpu-pack.json")]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / ".gpudata"),
                    help="a prepared dataset; made here with PIL when the folder does not exist (default .gpudata)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"), help="where the JSON files go")
    ap.add_argument("--device", default="cuda", help="cuda (cpu only to try the script's plumbing)")
    ap.add_argument("--quick", action="store_true", help="tiny benchmark settings (plumbing check)")
    ap.add_argument("--skip", action="append", default=[], choices=PARTS, help="leave a part out (repeatable)")
    ap.add_argument("--dry-run", action="store_true",
                    help="every part up to the first CUDA call: imports, dataset, the plan of commands")
    ap.add_argument("--image-size", type=int, default=224, help="of the dataset made when --data has none")
    ap.add_argument("--per-class", type=int, default=96, help="objects per class (10 classes) of that dataset")
    args = ap.parse_args(argv)
    if args.image_size < 32 or args.per_class < 6:
        print("error: --image-size must be at least 32 and --per-class at least 6", file=sys.stderr)
        return 2
    missing = missing_packages()
    if missing:
        print(f"error: {', '.join(missing)} do not import with {sys.executable}; install them or carry their "
              "wheels over (benchmarks/README.md)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data).resolve()
    started = time.perf_counter()
    record: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "targets": targets()}

    def save() -> None:
        from mmtm.loaders.atomic import atomic_write_text

        record["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(out / "gpu-check.json", json.dumps(record, indent=2) + "\n")

    if not (data_dir / "dataset.json").is_file():
        if data_dir.exists():
            print(f"error: {data_dir} exists but holds no dataset.json; pass another --data", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        make_dataset(data_dir, args.image_size, args.per_class)
        record["data_made"] = {"image_size": args.image_size, "per_class": args.per_class,
                               "seconds": round(time.perf_counter() - t0, 1)}
    from mmtm.loaders.errors import UserError
    from mmtm.loaders.dataset import open_dataset

    try:
        open_dataset(data_dir)  # a dataset the commands can read
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = str(data_dir)
    record["plan"] = plan(data, out, args.device, args.quick)
    save()
    if args.dry_run:
        print(f"dry run: data {data}; the plan is in {out / 'gpu-check.json'}")
        return 0

    info = run([*MMTM, "info", "--json"], LIMITS["info"])
    record["machine"] = last_json(info["stdout"]) if info["exit"] == 0 else trimmed(info)
    if args.device == "cuda" and not (isinstance(record["machine"], dict)
                                      and record["machine"].get("torch_gpus") not in (None, "none")):
        save()
        print("error: no GPU seen by torch; nothing to check", file=sys.stderr)
        return 2
    save()
    commands = record["plan"]
    if "pytest" not in args.skip:
        record["pytest"] = trimmed(run([sys.executable, *commands["pytest"][0]], LIMITS["pytest"]))
        save()
    if "graphs" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
            record["graph_vs_eager_cli"] = graph_vs_eager(data, Path(work), args.device, LIMITS["graphs"])
        save()
    for part, key in (("loader", "bench_loader"), ("train", "bench_train"), ("pack", "bench_pack")):
        if part not in args.skip:
            record[key] = trimmed(run([*MMTM, *commands[part][0]], LIMITS[part]))
            save()
    if "bench_train" in record and (out / "gpu-train.json").is_file():
        record["train_figures"] = _train_figures(json.loads((out / "gpu-train.json").read_text()))
    record["verdicts"] = verdicts(record, out, args.skip)
    save()
    judged = {k: v for k, v in record["verdicts"].items() if k != "not_judged"}
    for name, v in judged.items():
        print(f"{'pass' if v['pass'] else 'FAIL'}  {name}: measured {v['measured']}, target {v['compare']} "
              f"{v['target']}")
    for name in record["verdicts"].get("not_judged", []):
        print(f"skip  {name}: its part was left out")
    print(f"wrote {out / 'gpu-check.json'} in {record['seconds']} s")
    return 0 if all(v["pass"] for v in judged.values()) else 1


def _train_figures(bench: dict) -> list[dict]:
    """Per batch size and step kind: samples/s end to end, compute only, their ratio, syncs, and how steps ran."""
    keys = ("batch_size", "cuda_graphs", "capture_failed", "end_to_end_samples_per_s", "compute_only_samples_per_s",
            "end_to_end_over_compute", "data_wait_share", "host_syncs_per_step")
    return [{k: r.get(k) for k in keys} for r in bench["results"]]


if __name__ == "__main__":
    sys.exit(main())
