"""UME: the uni-modal ensemble, the averaged predictions of two networks each trained on one view alone.

Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning",
ICML 2023 (arXiv 2305.01233), §4: train a uni-modal model per modality, each with CE of its own head, and predict
with the average of their outputs. Neither the authors nor BalanceBenchmark released code for it; it is the
paper's formula (docs/methods/README.md). UME trains nothing new: its two members are exactly this project's
single-view baselines (`mmtm train --single-view VIEW`, the runs `compare --baselines` trains), so it is an
evaluation of two finished runs, not a training policy: `ensemble_accuracy(RUN0, RUN1)` scores ŷ = (ŷ0 + ŷ1)/2 with
ŷ0, ŷ1 their logits, by the same evaluation (`mmtm.analysis.evaluate.evaluate`) as every run. The two runs must be the
single-view runs of the first and second of the same two views, on the same data.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from mmtm.loaders.dataset import SPLITS
from mmtm.loaders.device import resolve_device
from mmtm.loaders.errors import UserError
from mmtm.loaders.factory import two_view_loader
from mmtm.training.checkpoint import load_weights
from mmtm.analysis.evaluate import evaluate
from mmtm.science.fusion import REGULAR
from mmtm.training.hardware import Compute
from mmtm.science.network import build_network, fused_logits
from mmtm.training.run import RunFolder, check_dataset_matches, load_run_checkpoint


def ume_logits(logits0: Tensor, logits1: Tensor) -> Tensor:
    """The ensemble's prediction: the mean of the two single-view networks' logits."""
    return fused_logits(logits0, logits1)


class UniModalEnsemble(nn.Module):
    """Two single-view networks as one two-view interface: forward returns (ŷ0 of the first, ŷ1 of the second), so
    the evaluation's ŷ = (ŷ0 + ŷ1)/2 is the ensemble and its per-head accuracies are each member's."""

    def __init__(self, member0: nn.Module, member1: nn.Module):
        super().__init__()
        self.member0, self.member1 = member0, member1

    def forward(self, x0: Tensor, x1: Tensor, mode: str = REGULAR) -> tuple[Tensor, Tensor]:
        return self.member0(x0, x1)[0], self.member1(x0, x1)[0]


def load_members(run0: str | Path, run1: str | Path, checkpoint: str = "best"):
    """(network 0, network 1, their config, classes): checked to be the single-view runs of the first and second of
    the same views, on data with the same digest and classes."""
    members, configs, digests, classes = [], [], [], None
    for slot, run_dir in enumerate((run0, run1)):
        run = RunFolder(run_dir)
        path = run.checkpoint(checkpoint)
        if not path.is_file():
            raise UserError(f"{path}: not found; UME needs two finished single-view runs (mmtm train --single-view)")
        ckpt, cfg, names = load_run_checkpoint(path)
        if cfg.single_view != slot:
            raise UserError(f"{path}: UME's member {slot} must be the single-view run of the "
                            f"{('first', 'second')[slot]} of its views, but it was trained with single_view "
                            f"{cfg.single_view!r}")
        net = build_network(cfg, len(names))
        load_weights(net, ckpt, path)
        members.append(net)
        configs.append(cfg)
        digests.append(run.data_digest())
        if classes is not None and names != classes:
            raise UserError(f"{path}: its classes differ from {run0}'s; UME's members must share their data")
        classes = names
    if tuple(configs[0].views) != tuple(configs[1].views) or digests[0] != digests[1]:
        raise UserError(f"{run1}: trained on views {list(configs[1].views)} of data {digests[1]}, not on "
                        f"{run0}'s views {list(configs[0].views)} of data {digests[0]}; UME's members must share both")
    return members[0], members[1], configs[0], classes


def ensemble_accuracy(run0: str | Path, run1: str | Path, *, checkpoint: str = "best", split: str = "test",
                      data: str | None = None, device: str = "cpu", batch_size: int = 32) -> dict:
    """UME on `split`: "acc" of the averaged logits, "acc_m0"/"acc_m1" of each member alone, losses and "n", as
    `mmtm.analysis.evaluate.evaluate` gives them, in float32."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    net0, net1, cfg, classes = load_members(run0, run1, checkpoint)
    data = data or cfg.data
    check_dataset_matches(data, classes, cfg.views)
    compute = Compute.of(resolve_device(device), amp="off", channels_last=cfg.channels_last).fp32()
    net = compute.place(UniModalEnsemble(net0, net1))
    loader = two_view_loader(data, split, views=tuple(cfg.views), batch_size=batch_size, train=False, seed=cfg.seed,
                             backend="torch", device=compute.device, num_threads=0)
    return evaluate(net, loader, compute)
