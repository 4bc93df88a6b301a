"""Packing runs on one device: the aggregate training throughput of K concurrent runs, for each K asked for.

Each of the K runs is a separate process (a job, mmtm/analysis/jobs.py) timing the step the training loop takes, as
`mmtm bench train` does, with the default CUDA-graph setting, on the same device at the same time, with cores/K CPU
threads; the aggregate is the sum of their end-to-end samples/s, which holds while their timed windows overlap
(they start together and time the same number of steps). With the CUDA MPS control daemon running the K processes
share the GPU through MPS; without it they time-share it (the result says which).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from mmtm.loaders.atomic import atomic_write_text
from mmtm.loaders.errors import UserError
from mmtm.analysis.jobs import start as start_job
from mmtm.analysis.sweep import MPS_PIPE, thread_share


def _packed_run(data: str, out: str, kw: dict) -> int:
    """One of the K runs (in its own process): bench train's result into `out`; a user error as the log's last line,
    which bench_pack repeats in its own error."""
    from mmtm.bench.train import bench_train

    try:
        atomic_write_text(out, json.dumps(bench_train(data, **kw)))
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def _run_entry(result: dict) -> dict:
    """The bench train entry a run's figure comes from: the CUDA-graph entry where there is one."""
    entries = result["results"]
    return next((e for e in entries if e["cuda_graphs"]), entries[0])


def bench_pack(data: str, *, ks: list[int], preset: str = "paper", batch_size: int = 8, device: str = "auto",
               steps: int = 20, timeout: float = 600) -> dict:
    if not ks or min(ks) < 1:
        raise UserError("--k takes run counts of at least 1, like 1,2,4,8")
    results = []
    for k in ks:
        threads = thread_share(k)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with tempfile.TemporaryDirectory(prefix="mmtm-pack-") as tmp:
            outs = [Path(tmp) / f"run{i}.json" for i in range(k)]
            kw = {"preset": preset, "batch_sizes": [batch_size], "device": device, "steps": steps,
                  "threads": threads}
            procs = [start_job(_packed_run, data, str(out), kw, env=env, log=out.with_suffix(".log")) for out in outs]
            errors = []
            for p, out in zip(procs, outs):
                p.join(timeout)
                if p.exitcode is None:
                    p.kill()
                    p.join()
                log = out.with_suffix(".log")
                if p.exitcode != 0:
                    lines = log.read_text().strip().splitlines() if log.is_file() else []
                    errors.append(lines[-1] if lines else f"exit {p.exitcode}")
            if errors:
                raise UserError(f"a packed run failed with K = {k}: {errors[0]}")
            entries = [_run_entry(json.loads(out.read_text())) for out in outs]
        per_run = [e["end_to_end_samples_per_s"] for e in entries]
        results.append({"k": k, "threads_per_run": threads, "per_run_samples_per_s": per_run,
                        "aggregate_samples_per_s": sum(per_run),
                        "per_run_steps": [{key: e[key] for key in ("cuda_graphs", "graph_replays", "eager_steps",
                                                                   "capture_failed")} for e in entries]})
    base = results[0]["aggregate_samples_per_s"]
    for r in results:
        r["aggregate_over_first"] = r["aggregate_samples_per_s"] / base
    return {"results": results, "config": {"data": data, "preset": preset, "batch_size": batch_size, "device": device,
                                           "steps": steps, "mps": (MPS_PIPE / "control").exists()}}
