"""`evaluate_cur`: the whole CUR protocol of docs/science.md §2 on a run's checkpoint, written to RUN/cur.json (or the
file `RunFolder.cur_for` names for another split or checkpoint), with each object's outcomes and the object-level
intervals they give."""
from __future__ import annotations

import math
from pathlib import Path

from mmtm.loaders.dataset import SPLITS
from mmtm.loaders.device import resolve_device
from mmtm.loaders.errors import UserError
from mmtm.loaders.factory import resolve_backend, two_view_loader
from mmtm.loaders.output import check_output_file
from mmtm.training.checkpoint import load_weights
from mmtm.analysis.evaluate import evaluate
from mmtm.science.fusion import FLOW_OFF, REGULAR
from mmtm.training.hardware import Compute
from mmtm.science.network import build_network
from mmtm.analysis.probe import probe_accuracies
from mmtm.training.run import RunFolder, check_dataset_matches, check_same_run, load_run_checkpoint
from mmtm.analysis.stats import object_intervals
from mmtm.training.tensorboard_log import log_cur
from mmtm.science.utilization import collect_mean_squeeze, cur_from_accuracies


def evaluate_cur(run_dir: str | Path, *, checkpoint: str = "best", data: str | None = None, split: str = "test",
                 device: str = "auto", loader: str | None = None, batch_size: int | None = None,
                 num_threads: int | None = None, probe: bool = False) -> dict:
    """Both CUR passes in one call (docs/science.md §2) and `RUN/cur.json`.

    Pass 1: mean squeeze vectors of every MMTM over the training subset (val excluded), eval mode,
    deterministic transform. Pass 2: the split with regular fusion and with cross-modal flow off.
    Both passes run in float32, whatever the run trained in (cur.json says so). The checkpoint file is only
    read; nothing in it changes. On the test split best.pt → RUN/cur.json, last.pt → RUN/cur-last.json; any other
    split or checkpoint → RUN/cur-SPLIT-CHECKPOINT.json (`RunFolder.cur_for`).
    cur.json also keeps, per object of the split, whether ŷ, ŷ0 (f0), ŷ0 with flow off (f0'), ŷ1 and ŷ1 with flow
    off were right ("objects", strings of 0/1 in row order), and a bootstrap interval over those objects of each
    measure ("intervals"). A single-view run has no flow to turn off: its result is its accuracy (A(f0) = A(f1) =
    acc), and the CUR fields are nan. With `probe`, each branch's linear-probe accuracy (mmtm/analysis/probe.py)."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = RunFolder(run_dir)
    ckpt_path = run.checkpoint(checkpoint)
    ckpt, cfg, classes = load_run_checkpoint(ckpt_path)
    run_cfg = run.saved_config()
    if run_cfg is not None:  # cur.json goes into this run: the checkpoint must be one of it, read on its data
        check_same_run(ckpt_path, cfg, run_cfg, f"it is not a checkpoint of the run {run.root}")
    data = data or (run_cfg or cfg).data
    check_dataset_matches(data, classes, cfg.views)
    check_output_file(run.cur_for(checkpoint, split), f"the result of eval-cur on {split} of this checkpoint")
    compute = Compute.of(resolve_device(device), amp=cfg.amp, channels_last=cfg.channels_last).fp32()
    net = build_network(cfg, len(classes))
    load_weights(net, ckpt, ckpt_path)
    net = compute.place(net)

    backend = resolve_backend(loader or cfg.loader)
    threads = num_threads or cfg.num_threads
    if threads == 0 and backend != "torch":
        threads = 1  # the run read in its own process (torch only); another loader reads with one thread

    def make(split_name: str):
        return two_view_loader(data, split_name, views=tuple(cfg.views),
                               batch_size=max(cfg.batch_size, 32) if batch_size is None else batch_size,
                               train=False, seed=cfg.seed, backend=backend, device=compute.device,
                               num_threads=threads)

    single = cfg.single_view is not None
    split_loader = make(split)
    regular = evaluate(net, split_loader, compute, mode=REGULAR, per_object=True)
    objects = {"index": regular["objects"]["index"], "fused": regular["objects"]["fused"],
               "f0": regular["objects"]["head0"], "f1": regular["objects"]["head1"]}
    if single:
        cur = dict.fromkeys(("acc_m0_only", "acc_m1_only", "u_m1_given_m0", "u_m0_given_m1", "d_util"), math.nan)
    else:
        collect_mean_squeeze(net, make("train"), device=compute.device)
        flow_off = evaluate(net, split_loader, compute, mode=FLOW_OFF, per_object=True)
        objects |= {"f0_only": flow_off["objects"]["head0"], "f1_only": flow_off["objects"]["head1"]}
        cur = {"acc_m0_only": flow_off["acc_m0"], "acc_m1_only": flow_off["acc_m1"],
               **cur_from_accuracies(regular["acc_m0"], regular["acc_m1"], flow_off["acc_m0"], flow_off["acc_m1"])}
    result = {
        "acc": regular["acc"], "acc_m0": regular["acc_m0"], "acc_m1": regular["acc_m1"], **cur,
        "checkpoint": str(ckpt_path), "epochs_trained": ckpt.get("epoch"), "policy": cfg.policy,
        "views": list(cfg.views), "single_view": cfg.single_view, "split": split, "n": regular["n"],
        "data": str(data), "precision": "float32", "intervals": object_intervals(objects, split=split),
        "objects": {"index": objects.pop("index"), **{k: "".join(map(str, v)) for k, v in objects.items()}},
    }
    if probe:
        result |= probe_accuracies(net, make("train"), split_loader, compute, len(classes), flow_off=not single)
    run.write_cur(checkpoint, result)
    log_cur(run.tb, result, checkpoint, int(ckpt["step"]))
    return result

