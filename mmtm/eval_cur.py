"""`evaluate_cur`: the whole CUR protocol of SPEC §2 on a run's checkpoint, written to RUN/cur.json."""
from __future__ import annotations

from pathlib import Path

from loaders.device import resolve_device
from loaders.factory import two_view_loader
from mmtm.checkpoint import load_checkpoint
from mmtm.config import from_dict
from mmtm.evaluate import evaluate
from mmtm.fusion import FLOW_OFF, REGULAR
from mmtm.hardware import Compute
from mmtm.network import build_network
from mmtm.run import RunFolder, check_dataset_matches
from mmtm.utilization import collect_mean_squeeze, cur_from_accuracies


def evaluate_cur(run_dir: str | Path, *, checkpoint: str = "best", data: str | None = None, split: str = "test",
                 device: str = "auto", loader: str | None = None, batch_size: int | None = None,
                 num_threads: int | None = None) -> dict:
    """Both CUR passes in one call (SPEC §2) and `RUN/cur.json`.

    Pass 1: mean squeeze vectors of every MMTM over the training subset (val excluded), eval mode,
    deterministic transform. Pass 2: the split with regular fusion and with cross-modal flow off.
    Both passes run in float32, whatever the run trained in (cur.json says so). The checkpoint file is only
    read; nothing in it changes. best.pt (or a path) → RUN/cur.json, last.pt → RUN/cur-last.json."""
    run = RunFolder(run_dir)
    ckpt_path = run.checkpoint(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    data = data or cfg.data
    check_dataset_matches(data, ckpt["classes"], cfg.views)
    compute = Compute.of(resolve_device(device), amp=cfg.amp, channels_last=cfg.channels_last).fp32()
    net = build_network(cfg, len(ckpt["classes"]))
    net.load_state_dict(ckpt["model"])
    net = compute.place(net)

    def make(split_name: str):
        return two_view_loader(data, split_name, views=tuple(cfg.views), batch_size=batch_size or max(cfg.batch_size, 32),
                               train=False, seed=cfg.seed, backend=loader or cfg.loader, device=compute.device,
                               num_threads=num_threads or cfg.num_threads)

    collect_mean_squeeze(net, make("train"), device=compute.device)
    split_loader = make(split)
    regular = evaluate(net, split_loader, compute, mode=REGULAR)
    flow_off = evaluate(net, split_loader, compute, mode=FLOW_OFF)
    result = {
        "acc": regular["acc"], "acc_m0": regular["acc_m0"], "acc_m1": regular["acc_m1"],
        "acc_m0_only": flow_off["acc_m0"], "acc_m1_only": flow_off["acc_m1"],
        **cur_from_accuracies(regular["acc_m0"], regular["acc_m1"], flow_off["acc_m0"], flow_off["acc_m1"]),
        "checkpoint": str(ckpt_path), "epochs_trained": ckpt.get("epoch"), "policy": cfg.policy, "views": list(cfg.views),
        "split": split, "n": regular["n"], "data": str(data), "precision": "float32",
    }
    run.write_cur(checkpoint, result)
    return result
