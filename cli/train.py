"""`mmtm train`: vanilla, --balanced or --random training of the two-view MMTM network."""
from __future__ import annotations

import sys

from pathlib import Path
from typing import Optional

import typer

from cli.errors import user_errors
from cli.values import view_pair
from loaders.errors import UserError


@user_errors
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset folder (from `mmtm prep`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config.json, steps.csv, epochs.csv, last.pt, best.pt."),
    balanced: bool = typer.Option(False, "--balanced", help="Balanced multi-modal learning (docs/science.md §4); "
                                                            "= --policy balanced."),
    random_: bool = typer.Option(False, "--random", help="Random re-balancing ablation; = --policy random."),
    policy: Optional[str] = typer.Option(None, help="Training policy (default vanilla): the paper's vanilla, balanced, "
                                                    "random; flipped (the balanced rule re-balancing the other "
                                                    "branch, a control); other papers' ogm-ge, g-blending, "
                                                    "moddrop, pmr, mmpareto."),
    views: Optional[str] = typer.Option(None, help="Two view indices; default: the data's dataset.json "
                                                    "default_views, 0,6 (the paper's) for 12-view sets, 0,1 for "
                                                    "two-view sets."),
    single_view: Optional[int] = typer.Option(None, metavar="VIEW", help="Train the single-view baseline instead: "
                                              "one ResNet-18 branch on VIEW (the view number, one of --views: 6 "
                                              "for the second of 0,6), one head, the same protocol; its test "
                                              "accuracy goes to cur.json and cur-last.json."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process."),
    lr: Optional[float] = typer.Option(None, help="SGD learning rate."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum."),
    width: Optional[int] = typer.Option(None, help="ResNet-18 base width (64 = torchvision's)."),
    alpha: Optional[float] = typer.Option(None, help="Re-balancing threshold α on d_speed [0.01]."),
    rebalance_steps: Optional[int] = typer.Option(None, help="Q, re-balancing steps per trigger [5]."),
    warmup_epochs: Optional[int] = typer.Option(None, help="Epochs of regular steps before re-balancing [1]."),
    rebalance_params: Optional[str] = typer.Option(None, help="all: re-balancing steps update every parameter "
                                                   "(official code); slow: only the slow branch."),
    speed_window: Optional[int] = typer.Option(None, help="K of the windowed d_speed view: the last K regular "
                                                          "steps [100]."),
    speed_signal: Optional[str] = typer.Option(None, help="The d_speed view the policy reads: cumulative "
                                                          "(official) or window (last K regular steps)."),
    speed_from_epoch: Optional[int] = typer.Option(None, help="Count the cumulative signal from this epoch, "
                                                              "e.g. after warm-up (official: 0)."),
    schedule: Optional[str] = typer.Option(None, help="Learning-rate schedule: plateau (the paper's, on the training "
                                                      "loss) or cosine (to the minimum over the epochs; the demo's)."),
    plateau_on: Optional[str] = typer.Option(None, help="Loss the plateau schedule watches: all steps (official) "
                                                        "or regular steps only."),
    ogm_alpha: Optional[float] = typer.Option(None, help="ogm-ge: α of the modulation 1 − tanh(α·ρ) [0.1]."),
    ogm_start_epoch: Optional[int] = typer.Option(None, help="ogm-ge: first modulated epoch [0]."),
    ogm_end_epoch: Optional[int] = typer.Option(None, help="ogm-ge: last modulated epoch (instead of "
                                                           "--ogm-end-fraction)."),
    ogm_end_fraction: Optional[float] = typer.Option(None, help="ogm-ge: the window ends after this share of the "
                                                                "epochs [0.51: the authors' 0..50 of 100]."),
    gb_interval: Optional[int] = typer.Option(None, help="g-blending: epochs per super-epoch, between weight "
                                                         "estimates (10)."),
    gb_estimator: Optional[str] = typer.Option(None, help="g-blending: published (warm-started copies trained "
                                                          "ahead, per view) or retrospective (the network's own "
                                                          "heads, one interval old)."),
    moddrop_p: Optional[float] = typer.Option(None, help="moddrop: chance a sample has one view dropped [0.2]."),
    pmr_alpha: Optional[float] = typer.Option(None, help="pmr: weight α of the slow modality's prototype loss [1]."),
    pmr_momentum: Optional[float] = typer.Option(None, help="pmr: momentum of the prototypes [0]."),
    pmr_start_epoch: Optional[int] = typer.Option(None, help="pmr: first epoch with the prototype loss [0]."),
    pmr_end_epoch: Optional[int] = typer.Option(None, help="pmr: last epoch with the prototype loss (instead of "
                                                           "--pmr-end-fraction)."),
    pmr_end_fraction: Optional[float] = typer.Option(None, help="pmr: the window ends after this share of the "
                                                                "epochs [71/130: the authors' 0..70 of 130]."),
    mmpareto_gamma: Optional[float] = typer.Option(None, help="mmpareto: γ, the factor on the combined encoder "
                                                              "gradients [1.5]."),
    gate: Optional[str] = typer.Option(None, help="MMTM gate: sigmoid (code) or 2sigmoid (paper)."),
    loss: Optional[str] = typer.Option(None, help="Task loss: heads = CE(ŷ0)+CE(ŷ1) (the Greedy paper's code), fused "
                                                  "= CE(ŷ) (OGM-GE's and PMR's code); default: the one the policy's "
                                                  "authors used, written to config.json."),
    seed: Optional[int] = typer.Option(None, help="Seed of weights, shuffling and augmentation."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
    loader: Optional[str] = typer.Option(None, help="auto | dali | torch."),
    threads: Optional[int] = typer.Option(None, "--loader-threads", help="Loader threads per process (DALI "
                                                     "threads, torch DataLoader workers); 0: the torch loader reads "
                                                     "in the training "
                                                     "process."),
    cuda_graphs: Optional[str] = typer.Option(None, help="auto: on one GPU, each step mode runs as a captured "
                                                         "CUDA graph; off: eager steps."),
    amp: Optional[str] = typer.Option(None, help="auto: bf16 autocast on CUDA; off: float32 everywhere."),
    max_steps_per_epoch: Optional[int] = typer.Option(None, help="Cap the steps of each epoch (quick looks)."),
    precise_bn: Optional[int] = typer.Option(None, help="Training batches that recompute the BatchNorm statistics "
                                                        "before each validation; 0: keep the running averages "
                                                        "(paper: 0, demo: 20)."),
    config: Optional[Path] = typer.Option(None, help="JSON config (e.g. a run's config.json); flags override it."),
    preset: str = typer.Option("paper", help="Defaults: paper (docs/science.md §5), demo (2-core CPU), or shortcut "
                                                       "or digits (those sets on a 2-core CPU)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
) -> None:
    """Train the two-view MMTM network and log d_speed (d_CLS) every step.

    \b
    Examples:
      mmtm train --data data/syn --out runs/vanilla --preset demo
      mmtm train --data data/syn --out runs/bal --preset demo --balanced
      mmtm train --data data/syn --out runs/flip --preset demo --policy flipped
      mmtm train --data data/syn --out runs/rear --preset demo --single-view 6
      mmtm train --data data/syn --out runs/ogm --preset demo --policy ogm-ge \\
        --ogm-alpha 0.3                             # OGM-GE, stronger
      mmtm train --data data/syn --out runs/w --preset demo --balanced \\
        --speed-signal window --speed-window 50     # policy reads 50 steps
      mmtm train --data data/mn40 --out runs/paper --balanced  # docs/science.md §5
      mmtm train --out runs/bal --resume           # after an interruption
      torchrun --standalone --nproc-per-node=2 --no-python \\
        mmtm train --data data/mn40 --out runs/ddp --balanced  # 2 procs
    """
    from mmtm import config as cfgmod
    from loaders.device import resolve_device
    from mmtm.run import RunFolder
    from mmtm.training import fit

    chosen = {name for name, given in (("balanced", balanced), ("random", random_), (policy, policy)) if given}
    if len(chosen) > 1:
        raise UserError(f"choose one policy, got {', '.join(sorted(chosen))} (--balanced, --random, --policy)")
    policy = chosen.pop() if chosen else None
    run_config = RunFolder(out).config
    if resume and config is None and run_config.is_file():
        config = run_config  # a resumed run keeps its own settings unless flags override them
    cfg = cfgmod.resolve(
        preset, config, data=str(data.resolve()) if data else None, out=str(out), policy=policy,
        views=view_pair(views), single_view_on=single_view,
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, width=width, alpha=alpha,
        rebalance_steps=rebalance_steps, warmup_epochs=warmup_epochs, rebalance_params=rebalance_params,
        speed_window=speed_window, speed_signal=speed_signal, speed_from_epoch=speed_from_epoch,
        schedule=schedule, plateau_on=plateau_on, ogm_alpha=ogm_alpha, ogm_start_epoch=ogm_start_epoch,
        ogm_end_epoch=ogm_end_epoch, ogm_end_fraction=ogm_end_fraction, gb_interval=gb_interval,
        gb_estimator=gb_estimator, moddrop_p=moddrop_p,
        pmr_alpha=pmr_alpha, pmr_momentum=pmr_momentum,
        pmr_start_epoch=pmr_start_epoch, pmr_end_epoch=pmr_end_epoch,
        pmr_end_fraction=pmr_end_fraction, mmpareto_gamma=mmpareto_gamma, gate=gate, loss=loss, seed=seed,
        device=device,
        loader=loader, num_threads=threads, cuda_graphs=cuda_graphs, amp=amp, max_steps_per_epoch=max_steps_per_epoch,
        precise_bn=precise_bn)
    if not cfg.data:
        raise UserError("--data is required (a folder made by `mmtm prep`)")
    if not resume and preset == "paper" and config is None and str(resolve_device(cfg.device)) == "cpu":
        print(f"note: --preset paper trains up to {cfg.epochs} epochs of a width-{cfg.width} ResNet-18 per view, "
              "minutes per epoch on a CPU; --preset demo is sized for one", file=sys.stderr)
    try:
        row = fit(cfg, resume=resume)
    except KeyboardInterrupt:
        last = RunFolder(cfg.out).last
        print(f"interrupted: continue with `mmtm train --out {cfg.out} --resume`" if last.is_file() else
              "interrupted before the first epoch ended: nothing to resume; start the run again", file=sys.stderr)
        raise typer.Exit(130) from None
    if row:
        d_speed = "—" if cfg.single_view is not None else f"{row['d_speed']:+.4f}"  # one branch: no d_speed
        typer.echo(f"done: {cfg.out}  val acc {row['val_acc']:.4f}  d_speed {d_speed}")
