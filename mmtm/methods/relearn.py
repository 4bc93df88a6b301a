"""Diagnosing & Re-learning: soft re-initialisation of each encoder by how far its train and validation clusterings
part.

Wei, Li, Feng, Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024 (arXiv 2407.09705);
official code GeWu-Lab/Diagnosing_Relearning_ECCV2024, `code/ours.py` at 025085e (docs/methods/README.md has the
line-by-line comparison). After training epoch e with e % N == 0, e > 0, at most `count` times: every encoder's
features of the whole training split and of the validation split (eval mode, no gradient) are each min-max scaled
to [−1, 1] per feature, clustered by k-means into as many clusters as classes, and scored by purity (the share of
samples whose label is their cluster's majority label); encoder m's weight is w_m = tanh(λ·|P_train − P_val|) and
every parameter θ of encoder m becomes w_m·θ_init + (1 − w_m)·θ (θ_init: its weights before the first step).
The task loss is the official code's CE of the fused output (`:198`): this policy's default `loss` is `fused`.
Defaults (the official run script `code/script/ours.sh`): λ = 3, N = 20, count = 3 in a run of 90 epochs — a run of
another length re-learns at the same shares of it, N = round(epochs·20/90) (resolved in mmtm/training/config.py: 3 of 15
demo epochs, 67 of the paper's 300), unless an interval is given.
Mapping: the encoder of modality m is branch m without its head fc (the official `audio_net`/`visual_net`, every
parameter, BatchNorm's affine ones included; the heads and the MMTMs, the fusion of both views, are not
re-initialised; running BatchNorm statistics are buffers, as there). Its feature is the input of branch m's fc
(after MMTM₄, 8w-dim), the official encoders' pooled output. k-means runs here in torch (sklearn is not a
dependency): k-means++ seeding with sklearn's greedy local trials, 10 restarts (sklearn's default before 1.4), at
most 300 Lloyd iterations, tolerance 1e-4 of the mean feature variance, from a generator seeded 0 (the official
`random_state=0`); sklearn's own random stream differs, so the clusterings agree where the structure is clear, not
draw for draw. Under DDP each rank's features are gathered first, so every rank clusters the same samples and
re-initialises alike.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmtm.methods.pmr import branch_features
from mmtm.training.policy import EpochContext, StepPolicy

DEFAULT_LAMBDA = 3.0   # move_lambda (script and argparse)
DEFAULT_COUNT = 3      # reinit_num (script and argparse)
SCRIPT_INTERVAL, SCRIPT_EPOCHS = 20, 90  # reinit_epoch of the script's 90-epoch run (argparse: 20 of 50)
KMEANS_RESTARTS, KMEANS_MAX_ITER, KMEANS_TOL, KMEANS_SEED = 10, 300, 1e-4, 0


def interval_for(epochs: int) -> int:
    """N for a run of `epochs`: the script's 20 of 90 at the same share, at least 1."""
    return max(1, math.floor(epochs * SCRIPT_INTERVAL / SCRIPT_EPOCHS + 0.5))


def relearns_after(epoch: int, interval: int, count: int) -> bool:
    """Whether training epoch `epoch` (0-based) is followed by re-learning: `epoch % N == 0 and epoch > 0`, the
    first `count` such epochs."""
    return epoch > 0 and epoch % interval == 0 and epoch // interval <= count


def min_max_scale(x: Tensor) -> Tensor:
    """sklearn's MinMaxScaler(feature_range=(−1, 1)).fit_transform per column; a constant column maps to −1."""
    low, high = x.min(0).values, x.max(0).values
    span = high - low
    scale = 2 / torch.where(span == 0, torch.ones_like(span), span)
    return x * scale + (-1 - low * scale)


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding with 2 + ⌊ln k⌋ candidates per centre, the closest-sum one kept (sklearn's greedy form)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centres = [x[torch.randint(n, (1,), generator=generator)].squeeze(0)]
    closest = (x - centres[0]).square().sum(1)
    for _ in range(1, k):
        draws = torch.rand(trials, generator=generator, dtype=x.dtype) * closest.sum()
        candidates = torch.searchsorted(closest.cumsum(0), draws).clamp(max=n - 1)
        dist_to = torch.cdist(x[candidates], x).square()
        sums = torch.minimum(closest[None], dist_to).sum(1)
        best = int(sums.argmin())
        closest = torch.minimum(closest, dist_to[best])
        centres.append(x[candidates[best]])
    return torch.stack(centres)


def kmeans(x: Tensor, k: int, seed: int = KMEANS_SEED) -> Tensor:
    """Cluster labels [N] of k-means (Lloyd) on `x` [N, D] in float64: the lowest-inertia of KMEANS_RESTARTS runs."""
    x = x.double()
    generator = torch.Generator().manual_seed(seed)
    tol = KMEANS_TOL * x.var(0, unbiased=False).mean()
    best_labels, best_inertia = None, math.inf
    for _ in range(KMEANS_RESTARTS):
        centres = _kmeans_pp(x, k, generator)
        for _ in range(KMEANS_MAX_ITER):
            labels = torch.cdist(x, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)[:, None]
            new = torch.where(counts > 0, sums / counts.clamp(min=1), centres)  # an emptied cluster keeps its centre
            shift = (new - centres).square().sum()
            centres = new
            if shift <= tol:
                break
        labels = torch.cdist(x, centres).argmin(1)
        inertia = float((x - centres[labels]).square().sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def purity(labels: Tensor, clusters: Tensor) -> float:
    """The share of samples whose label is the majority label of their cluster."""
    table = torch.zeros(int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    table.index_put_((clusters, labels), torch.ones_like(labels), accumulate=True)
    return float(table.max(1).values.sum()) / len(labels)


def clustering_purity(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """Purity of k-means (k = number of classes) on the min-max-scaled features."""
    return purity(labels.cpu(), kmeans(min_max_scale(features.double().cpu()), num_classes))


def relearn_weight(purity_train: float, purity_val: float, lam: float = DEFAULT_LAMBDA) -> float:
    """w = tanh(λ·|P_train − P_val|)."""
    return math.tanh(lam * abs(purity_train - purity_val))


@torch.no_grad()
def soft_reinit_(params: list[nn.Parameter], init: list[Tensor], weight: float) -> None:
    """θ ← w·θ_init + (1 − w)·θ, in place (the optimiser keeps its state for θ, as the official code's does)."""
    for p, p0 in zip(params, init):
        p.copy_(weight * p0 + (1 - weight) * p)


def encoder_params(net: nn.Module, m: int) -> list[nn.Parameter]:
    """Encoder m: branch m's parameters but its head fc."""
    branch = (net.branch0, net.branch1)[m]
    return [p for name, p in branch.named_parameters() if not name.startswith("fc.")]


@torch.no_grad()
def encoder_features(context: EpochContext, split: str, train: bool, epoch: int) -> tuple[list[Tensor], Tensor]:
    """([features of encoder 0, of encoder 1], labels) over the whole split in eval mode, float32 on the CPU;
    under DDP every rank's share gathered."""
    loader = context.loader(split, train)
    loader.set_epoch(epoch)
    net, compute = context.net, context.compute
    features: list[list[Tensor]] = [[], []]
    labels = []
    was_training = net.training
    net.eval()
    with branch_features(net) as captured:
        for batch in loader:
            with compute.autocast():
                net(compute.layout(batch.view0), compute.layout(batch.view1))
            for m in (0, 1):
                features[m].append(captured[m].float().cpu())
            labels.append(batch.label.cpu())
    net.train(was_training)
    shares = ([torch.cat(f) for f in features], torch.cat(labels))
    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, shares)
        shares = ([torch.cat([g[0][m] for g in gathered]) for m in (0, 1)], torch.cat([g[1] for g in gathered]))
    return shares


class ReLearnPolicy(StepPolicy):
    """Diagnosing & Re-learning in the one training loop: every step regular with the task loss; at the start of
    the epoch after each re-learning epoch, both encoders are diagnosed and softly re-initialised."""

    name = "relearn"
    default_loss = "fused"

    def __init__(self, interval: int = SCRIPT_INTERVAL, count: int = DEFAULT_COUNT, lam: float = DEFAULT_LAMBDA):
        self.interval, self.count, self.lam = interval, count, lam
        self.init: list[list[Tensor]] | None = None  # θ_init of encoder 0 and 1, taken before the first step
        self.weights: list[float] | None = None      # the last re-learning's [w0, w1], for inspection
        self.purities: list[float] | None = None     # its [P_train0, P_val0, P_train1, P_val1]
        self.device = torch.device("cpu")

    @classmethod
    def from_config(cls, cfg) -> "ReLearnPolicy":
        return cls(cfg.relearn_interval, cfg.relearn_count, cfg.relearn_lambda)

    def to(self, device: torch.device) -> "ReLearnPolicy":
        self.device = device
        return self

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        if self.init is None:  # a new run: the network has not stepped yet
            self.init = [[p.detach().clone() for p in encoder_params(context.net, m)] for m in (0, 1)]
        if not relearns_after(epoch - 1, self.interval, self.count):
            return
        num_classes = len(context.loader("train", True).classes)
        train_features, train_labels = encoder_features(context, "train", True, epoch - 1)
        val_features, val_labels = encoder_features(context, "val", False, epoch - 1)
        self.purities, self.weights = [], []
        for m in (0, 1):
            p_train = clustering_purity(train_features[m], train_labels, num_classes)
            p_val = clustering_purity(val_features[m], val_labels, num_classes)
            self.purities += [p_train, p_val]
            self.weights.append(relearn_weight(p_train, p_val, self.lam))
            soft_reinit_(encoder_params(context.net, m), self.init[m], self.weights[m])

    def state_dict(self) -> dict:
        return {"init": self.init, "weights": self.weights, "purities": self.purities}

    def load_state_dict(self, state: dict) -> None:
        self.init = None if state["init"] is None else [[t.to(self.device) for t in ts] for ts in state["init"]]
        self.weights, self.purities = state["weights"], state["purities"]
