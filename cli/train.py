"""`mmtm train`: vanilla, --balanced or --random training of the two-view MMTM network."""
from __future__ import annotations

import sys

from pathlib import Path
from typing import Optional

import typer

from mmtm.cli.errors import user_errors
from mmtm.cli.values import view_pair
from mmtm.loaders.errors import UserError
from mmtm.training.presets import AUTO, AUTO_HELP, shown

VIEWS_DEFAULT = "the data's default_views: 0,6 (the paper's) for 12 views, 0,1 for two"
PRESET_HELP = (f"The defaults above: paper (docs/science.md §5, for a GPU), demo (a 2-core CPU), or shortcut or "
               f"digits (those sets on a 2-core CPU); {AUTO_HELP}.")


@user_errors
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset folder (from `mmtm prep`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: config.json, steps.csv, epochs.csv, last.pt, best.pt."),
    balanced: bool = typer.Option(False, "--balanced", help="Balanced multi-modal learning (docs/science.md §4); "
                                                            "= --policy balanced."),
    random_: bool = typer.Option(False, "--random", help="Random re-balancing ablation; = --policy random."),
    policy: Optional[str] = typer.Option(None, show_default="vanilla", help="Training policy: the paper's "
                                         "vanilla, balanced, random; flipped (the balanced rule re-balancing the "
                                         "other branch, a control); other papers' ogm-ge, g-blending, moddrop, pmr, "
                                         "mmpareto, agm, opm, umt, relearn."),
    views: Optional[str] = typer.Option(None, show_default=VIEWS_DEFAULT, help="Two view indices, like 0,6."),
    single_view: Optional[int] = typer.Option(None, metavar="VIEW", help="Train the single-view baseline instead: "
                                              "one ResNet-18 branch on VIEW (the view number, one of --views: 6 "
                                              "for the second of 0,6), one head, the same protocol; its test "
                                              "accuracy goes to cur.json and cur-last.json."),
    epochs: Optional[int] = typer.Option(None, show_default=shown("epochs"), help="Maximum epochs."),
    batch_size: Optional[int] = typer.Option(None, show_default=shown("batch_size"), help="Batch size per process."),
    lr: Optional[float] = typer.Option(None, show_default=shown("lr"), help="SGD learning rate."),
    momentum: Optional[float] = typer.Option(None, show_default=shown("momentum"), help="SGD momentum."),
    width: Optional[int] = typer.Option(None, show_default=shown("width"),
                                        help="ResNet-18 base width (64 = torchvision's)."),
    alpha: Optional[float] = typer.Option(None, show_default="0.01", help="Re-balancing threshold α on d_speed."),
    rebalance_steps: Optional[int] = typer.Option(None, show_default="5", help="Q, re-balancing steps per trigger."),
    warmup_epochs: Optional[int] = typer.Option(None, show_default="1",
                                                help="Epochs of regular steps before re-balancing."),
    rebalance_params: Optional[str] = typer.Option(None, show_default="all", help="all: re-balancing steps update "
                                                   "every parameter (official code); slow: only the slow branch."),
    speed_window: Optional[int] = typer.Option(None, show_default="100", help="K of the windowed d_speed view: the "
                                                                           "last K regular steps."),
    speed_signal: Optional[str] = typer.Option(None, show_default="cumulative", help="The d_speed view the policy "
                                               "reads: cumulative (official) or window (last K regular steps)."),
    speed_from_epoch: Optional[int] = typer.Option(None, show_default="0", help="Count the cumulative signal from "
                                                   "this epoch, e.g. after warm-up (official: 0)."),
    schedule: Optional[str] = typer.Option(None, show_default=shown("schedule"), help="Learning-rate schedule: "
                                           "plateau (the paper's, on the training loss) or cosine (to the minimum "
                                           "over the epochs)."),
    plateau_on: Optional[str] = typer.Option(None, show_default="all", help="Loss the plateau schedule watches: all "
                                                                          "steps (official) or regular steps only."),
    ogm_alpha: Optional[float] = typer.Option(None, show_default="0.1",
                                              help="ogm-ge: α of the modulation 1 − tanh(α·ρ)."),
    ogm_start_epoch: Optional[int] = typer.Option(None, show_default="0", help="ogm-ge: first modulated epoch."),
    ogm_end_epoch: Optional[int] = typer.Option(None, help="ogm-ge: last modulated epoch (instead of "
                                                           "--ogm-end-fraction)."),
    ogm_end_fraction: Optional[float] = typer.Option(None, show_default="0.51: the authors' 0..50 of 100",
                                                     help="ogm-ge: the window ends after this share of the epochs."),
    gb_interval: Optional[int] = typer.Option(None, show_default="10", help="g-blending: epochs per super-epoch, "
                                                                          "between weight estimates."),
    gb_estimator: Optional[str] = typer.Option(None, show_default="published", help="g-blending: published "
                                               "(warm-started copies trained ahead, per view) or retrospective (the "
                                               "network's own heads, one interval old)."),
    moddrop_p: Optional[float] = typer.Option(None, show_default="0.2",
                                              help="moddrop: chance a sample has one view dropped."),
    pmr_alpha: Optional[float] = typer.Option(None, show_default="1.0",
                                              help="pmr: weight α of the slow modality's prototype loss."),
    pmr_momentum: Optional[float] = typer.Option(None, show_default="0.0", help="pmr: momentum of the prototypes."),
    pmr_start_epoch: Optional[int] = typer.Option(None, show_default="0",
                                                  help="pmr: first epoch with the prototype loss."),
    pmr_end_epoch: Optional[int] = typer.Option(None, help="pmr: last epoch with the prototype loss (instead of "
                                                           "--pmr-end-fraction)."),
    pmr_end_fraction: Optional[float] = typer.Option(None, show_default="71/130: the authors' 0..70 of 130",
                                                     help="pmr: the window ends after this share of the epochs."),
    mmpareto_gamma: Optional[float] = typer.Option(None, show_default="1.5", help="mmpareto: γ, the factor on the "
                                                                                "combined encoder gradients."),
    agm_alpha: Optional[float] = typer.Option(None, show_default="1", help="agm: α of the coefficients "
                                              "exp(α·min(·, 10))."),
    agm_end_epoch: Optional[int] = typer.Option(None, help="agm: last epoch that updates the coefficients (instead "
                                                           "of --agm-end-fraction)."),
    agm_end_fraction: Optional[float] = typer.Option(None, show_default="0.2: the authors' first 20 of 100",
                                                     help="agm: the window ends after this share of the epochs."),
    opm_q_base: Optional[float] = typer.Option(None, show_default="0.5",
                                               help="opm: base drop probability of the dominant view."),
    opm_lambda: Optional[float] = typer.Option(None, show_default="0.5",
                                               help="opm: λ, how much the score ratio raises it."),
    opm_p_exe: Optional[float] = typer.Option(None, show_default="0.7", help="opm: chance that a batch drops at all."),
    opm_warmup_epochs: Optional[int] = typer.Option(None, show_default="6",
                                                    help="opm: epochs without dropping at the start."),
    opm_ogm: Optional[str] = typer.Option(None, show_default="off: as its OPM script", help="opm: the journal code's "
                                          "gradient modulation as well: off, ogm or ogm-ge."),
    opm_ogm_coeff: Optional[str] = typer.Option(None, show_default="tanh", help="opm: tanh (OGM's 1 − tanh(α·ρ) on "
                                                "the dominant view) or plus (OGM+: the other view ×4)."),
    opm_ogm_alpha: Optional[float] = typer.Option(None, show_default="1",
                                                  help="opm: α of --opm-ogm's tanh coefficient."),
    opm_ogm_end_epoch: Optional[int] = typer.Option(None, help="opm: last epoch of --opm-ogm (instead of "
                                                               "--opm-ogm-end-fraction)."),
    opm_ogm_end_fraction: Optional[float] = typer.Option(None, show_default="0.81: the authors' 0..80 of 100",
                                                         help="opm: --opm-ogm's window ends after this share of the "
                                                              "epochs."),
    teachers: Optional[str] = typer.Option(None, metavar="RUN0,RUN1", help="umt: the single-view runs (their "
                                           "best.pt) of the first and second of --views on the same data, the "
                                           "uni-modal teachers (e.g. compare's baselines)."),
    umt_scaling: Optional[float] = typer.Option(None, show_default="10",
                                                help="umt: the weight of the feature distillation."),
    relearn_interval: Optional[int] = typer.Option(None, show_default="paper 67, demo 3, shortcut 3, digits 1",
                                                   help="relearn: re-learn after every N-th epoch (the official "
                                                        "script's 20 of 90 epochs, as the same share of the run)."),
    relearn_count: Optional[int] = typer.Option(None, show_default="3", help="relearn: how many times at most."),
    relearn_lambda: Optional[float] = typer.Option(None, show_default="3",
                                                   help="relearn: λ of w = tanh(λ·|purity gap|)."),
    gate: Optional[str] = typer.Option(None, show_default="sigmoid", help="MMTM gate: sigmoid (code) or 2sigmoid "
                                                                        "(paper)."),
    loss: Optional[str] = typer.Option(None, show_default="the policy's authors' choice, written to config.json",
                                       help="Task loss: heads = CE(ŷ0)+CE(ŷ1) (the Greedy paper's code), fused = "
                                            "CE(ŷ) (OGM-GE's and PMR's code)."),
    seed: Optional[int] = typer.Option(None, show_default=shown("seed"),
                                       help="Seed of weights, shuffling and augmentation."),
    device: Optional[str] = typer.Option(None, show_default="auto", help="auto | cpu | cuda."),
    loader: Optional[str] = typer.Option(None, show_default=shown("loader"), help="auto | dali | torch."),
    threads: Optional[int] = typer.Option(None, "--loader-threads", show_default=shown("num_threads"),
                                          help="Loader threads per process (DALI threads, torch DataLoader "
                                               "workers); 0: the torch loader reads in the training process."),
    cuda_graphs: Optional[str] = typer.Option(None, show_default="auto", help="auto: on one GPU, each step mode runs "
                                              "as a captured CUDA graph; off: eager steps."),
    amp: Optional[str] = typer.Option(None, show_default="auto",
                                      help="auto: bf16 autocast on CUDA; off: float32 everywhere."),
    max_steps_per_epoch: Optional[int] = typer.Option(None, show_default=shown("max_steps_per_epoch"),
                                                      help="Cap the steps of each epoch (quick looks)."),
    precise_bn: Optional[int] = typer.Option(None, show_default=shown("precise_bn"), help="Training batches that "
                                             "recompute the BatchNorm statistics before each validation; 0: keep the "
                                             "running averages."),
    config: Optional[Path] = typer.Option(None, help="JSON config (e.g. a run's config.json); flags override it."),
    preset: str = typer.Option(AUTO, help=PRESET_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
) -> None:
    """Train the two-view MMTM network and log d_speed every step.

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
    from mmtm.training import config as cfgmod
    from mmtm.loaders.device import resolve_device
    from mmtm.training.presets import chosen as chosen_preset
    from mmtm.training.run import RunFolder
    from mmtm.training.loop import fit

    chosen = {name for name, given in (("balanced", balanced), ("random", random_), (policy, policy)) if given}
    if len(chosen) > 1:
        raise UserError(f"choose one policy, got {', '.join(sorted(chosen))} (--balanced, --random, --policy)")
    policy = chosen.pop() if chosen else None
    run_config = RunFolder(out).config
    if resume and config is None and run_config.is_file():
        config = run_config  # a resumed run keeps its own settings unless flags override them
    preset = chosen_preset(preset, device or "auto")
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
        pmr_end_fraction=pmr_end_fraction, mmpareto_gamma=mmpareto_gamma, agm_alpha=agm_alpha,
        agm_end_epoch=agm_end_epoch, agm_end_fraction=agm_end_fraction, opm_q_base=opm_q_base, opm_lambda=opm_lambda,
        opm_p_exe=opm_p_exe, opm_warmup_epochs=opm_warmup_epochs, opm_ogm=opm_ogm, opm_ogm_coeff=opm_ogm_coeff,
        opm_ogm_alpha=opm_ogm_alpha, opm_ogm_end_epoch=opm_ogm_end_epoch, opm_ogm_end_fraction=opm_ogm_end_fraction,
        gate=gate, loss=loss, seed=seed,
        device=device, umt_teachers=_absolute_runs(teachers), umt_scaling=umt_scaling,
        relearn_interval=relearn_interval, relearn_count=relearn_count, relearn_lambda=relearn_lambda,
        loader=loader, num_threads=threads, cuda_graphs=cuda_graphs, amp=amp, max_steps_per_epoch=max_steps_per_epoch,
        precise_bn=precise_bn)
    if not cfg.data:
        raise UserError("--data is required (a folder made by `mmtm prep`)")
    if not resume and preset == "paper" and config is None and str(resolve_device(cfg.device)) == "cpu":
        print(_paper_on_a_cpu(cfg), file=sys.stderr)
    try:
        row = fit(cfg, resume=resume)
    except KeyboardInterrupt:
        last = RunFolder(cfg.out).last
        print(f"interrupted: continue with `mmtm train --out {cfg.out} --resume`" if last.is_file() else
              "interrupted before the first epoch ended: nothing to resume; start the run again", file=sys.stderr)
        raise typer.Exit(130) from None
    if row:
        if cfg.single_view is not None:  # one branch: no d_speed
            typer.echo(f"done: {cfg.out}  val acc {row['val_acc']:.4f}  view {cfg.views[cfg.single_view]} alone")
            return
        from mmtm.science.formulas import sign_sentence
        first, second = (f"view {v}" for v in cfg.views)
        typer.echo(f"done: {cfg.out}  val acc {row['val_acc']:.4f}  d_speed {row['d_speed']:+.4f}; "
                   f"{sign_sentence(first, second, 'd_speed')}")


def _paper_on_a_cpu(cfg) -> str:
    """The note that the paper preset, sized for a GPU, was started on a CPU, with the time it may take."""
    from mmtm.loaders.dataset import open_dataset
    from mmtm.training.presets import cpu_hours, steps_per_epoch
    from mmtm.analysis.sweep import usable_cores

    data = open_dataset(cfg.data)
    steps = steps_per_epoch(data.meta["counts"]["train"], cfg.batch_size, cfg.max_steps_per_epoch)
    cores = cfg.cpu_threads or usable_cores()
    hours = cpu_hours(width=cfg.width, image_size=data.image_size, epochs=cfg.epochs, steps_per_epoch=steps,
                      batch_size=cfg.batch_size, cores=cores)
    took = (f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
            if hours >= 1 / 60 else "under a minute")
    return (f"note: --preset paper on a CPU: up to {cfg.epochs} epochs of {steps} steps (width {cfg.width}, "
            f"{data.image_size} px), about {took} of training steps on {cores} cores (estimated); --preset demo is "
            "sized for a CPU")


def _absolute_runs(text: Optional[str]) -> Optional[str]:
    """--teachers with each run folder made absolute (config.json names them wherever the run is repeated from)."""
    if text is None:
        return None
    return ",".join(str(Path(p.strip()).resolve()) if p.strip() else "" for p in text.split(","))
