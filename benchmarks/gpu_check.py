"""The whole GPU acceptance in one command (`make gpu-check`, or `python3 benchmarks/gpu_check.py --data DIR` on a
machine where the project cannot be installed): the install, the CUDA tests, a short training run of every step
mode with CUDA graphs on and off compared, the loader and training benchmarks at 224 px, and K = 1, 2, 4, 8 runs
packed on the GPU. Writes benchmarks/gpu-check.json (plus gpu-loader.json, gpu-train.json and gpu-pack.json) with
the command, the machine and the commit.
Each part has its own time limit so that the whole fits in 8 minutes on one H200; a part that fails or runs out
of time is recorded as such and the rest still runs.

DIR is a prepared 224-px dataset: `mmtm prep synthetic --out .gpudata --image-size 224 --per-class 96` (the
renderer cannot run on a GPU machine without EGL; make it here and carry it over, see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MMTM = [sys.executable, "-c", "from cli.app import main; main()"]  # works installed or from a bare checkout
# The targets on one H200 (paper preset, bf16, 224 px, DALI).
TARGETS = {"b8_end_to_end": 1600, "b64_end_to_end": 4800, "end_to_end_over_compute": 0.95, "host_syncs_per_step": 1,
           "graph_vs_eager_fp32_rel": 1e-5}


def run(args: list[str], timeout: float) -> dict:
    """Run a command from the project root; its exit code, seconds and the tail of its output."""
    start = time.perf_counter()
    try:
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
                               "PYTHONPATH")]))})
        code, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        code, out = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else ""
    seconds = round(time.perf_counter() - start, 1)
    print(f"[{seconds:6.1f} s] exit {code}: {' '.join(args[3:] if args[:3] == MMTM else args)}", flush=True)
    return {"command": " ".join(args), "exit": code, "seconds": seconds, "output_tail": out[-3000:]}


def steps_of(run_dir: Path) -> list[dict]:
    with open(run_dir / "steps.csv", newline="") as f:
        return list(csv.DictReader(f))


def graph_vs_eager(data: str, work: Path, device: str, timeout: float) -> dict:
    """A short fp32 run of the random policy (every step mode) with graphs off and on: step losses and d_speed,
    and eval-cur's accuracies, compared."""
    parts, runs = [], {}
    for graphs in ("off", "auto"):
        out = work / f"graphs-{graphs}"
        parts.append(run([*MMTM, "train", "--data", data, "--out", str(out), "--preset", "demo", "--policy", "random",
                          "--warmup-epochs", "0", "--epochs", "2", "--max-steps-per-epoch", "25", "--amp", "off",
                          "--cuda-graphs", graphs, "--device", device], timeout))
        parts.append(run([*MMTM, "eval-cur", str(out), "--checkpoint", "last", "--device", device], timeout))
        runs[graphs] = out
    if any(p["exit"] != 0 for p in parts):
        return {"ok": False, "parts": parts}
    a, b = steps_of(runs["off"]), steps_of(runs["auto"])
    rel = max(abs(float(x[k]) - float(y[k])) / max(abs(float(x[k])), 1e-12)
              for x, y in zip(a, b) for k in ("loss", "d_speed") if x[k] != "nan")
    cur = [json.loads((runs[g] / "cur-last.json").read_text()) for g in ("off", "auto")]
    return {"ok": len(a) == len(b) and [s["mode"] for s in a] == [s["mode"] for s in b],
            "modes": sorted({s["mode"] for s in a}), "steps": len(a), "max_rel_diff_loss_d_speed": rel,
            "cur_equal": all(cur[0][k] == cur[1][k] for k in ("acc", "acc_m0", "acc_m1", "d_util")), "parts": parts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared 224-px dataset")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"), help="where the JSON files go")
    ap.add_argument("--device", default="cuda", help="cuda (cpu only to try the script's plumbing)")
    ap.add_argument("--quick", action="store_true", help="tiny benchmark settings (plumbing check)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    started = time.perf_counter()
    record: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "targets": TARGETS}
    info = run([*MMTM, "info", "--json"], 60)
    record["machine"] = json.loads(info["output_tail"]) if info["exit"] == 0 else info
    if args.device == "cuda" and not (isinstance(record["machine"], dict)
                                      and record["machine"].get("torch_gpus") not in (None, "none")):
        print("error: no GPU seen by torch; nothing to check", file=sys.stderr)
        return 2
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                   "tests/test_cuda_graphs.py"]
    record["pytest"] = run(pytest_args, 200)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        record["graph_vs_eager_cli"] = graph_vs_eager(data, Path(work), args.device, 90)
    quick = ["--repeats", "1"] if args.quick else []
    steps = ["--steps", "3"] if args.quick else []
    record["bench_loader"] = run([*MMTM, "bench", "loader", "--data", data, "--device", args.device, "--batch-size",
                                  "32", "--threads", "4", *quick, "--save", str(out / "gpu-loader.json")], 90)
    record["bench_train"] = run([*MMTM, "bench", "train", "--data", data, "--device", args.device, "--preset",
                                 "paper", "--batch-size", "8,64", *steps, "--save", str(out / "gpu-train.json")], 180)
    record["bench_pack"] = run([*MMTM, "bench", "pack", "--data", data, "--device", args.device, "--preset", "paper",
                                "--batch-size", "8", "--k", "1,2" if args.quick else "1,2,4,8", *steps,
                                "--save", str(out / "gpu-pack.json")], 150)
    if (out / "gpu-train.json").is_file():
        record["train_figures"] = _train_figures(json.loads((out / "gpu-train.json").read_text()))
    record["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'gpu-check.json'} in {record['seconds']} s")
    return 0 if record["pytest"]["exit"] == 0 and record["graph_vs_eager_cli"].get("ok") else 1


def _train_figures(bench: dict) -> list[dict]:
    """Per batch size and step kind: samples/s end to end, compute only, and their ratio."""
    return [{k: r[k] for k in ("batch_size", "cuda_graphs", "end_to_end_samples_per_s", "compute_only_samples_per_s",
                               "end_to_end_over_compute", "data_wait_share")} for r in bench["results"]]


if __name__ == "__main__":
    sys.exit(main())
