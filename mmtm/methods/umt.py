"""UMT: the uni-modal teacher, feature distillation from frozen single-view networks into the two-view network.

Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning",
ICML 2023 (arXiv 2305.01233; first as "Improving Multi-Modal Learning with Uni-Modal Teachers", arXiv 2106.11059).
The authors released no code; this follows the closest released implementation, GeWu-Lab/BalanceBenchmark's
`balancemm/trainer/UMT_trainer.py` at 4c1482f (docs/methods/README.md has the line-by-line comparison): loss =
CE(ŷ) + scaling·Σ_m MSE(teacher_m feature, encoder_m feature), the teachers uni-modal models trained beforehand
with CE of their one head and loaded from their checkpoints, run without gradient on the same batch. Default
scaling 10 (BalanceBenchmark's config); BalanceBenchmark distils over epochs 0..80 of its 30-epoch runs, the whole
run, as here. The task loss is CE of the fused output: this policy's default `loss` is `fused`.
Mapping: the teacher of modality m is a finished single-view run of this project on the m-th of the run's views
(`mmtm train --single-view`, the baselines `compare --baselines` trains), its best.pt; the features are the inputs
of the heads — branch m's fc in the two-view network (after MMTM₄), the teacher's one fc — both 8w-dim, so the
teachers must have the student's width. The teachers run in eval mode (BalanceBenchmark leaves them in train mode,
whose BatchNorm normalises by each batch and moves running statistics that no checkpoint keeps: a resumed run could
not continue exactly, and the paper's teachers are fixed). A teacher trained on other data (its data.json digest),
on other views, on the other slot or at another width is refused with one line.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtm.loaders.dataset import data_digest
from mmtm.loaders.errors import UserError
from mmtm.training.checkpoint import load_checkpoint, load_weights
from mmtm.methods.pmr import branch_features
from mmtm.science.network import SingleViewNet, task_loss
from mmtm.training.policy import EpochContext, StepPolicy

DEFAULT_SCALING = 10.0  # BalanceBenchmark's configs/trainer_config.yaml UMT.scaling


def distillation_loss(student: list[Tensor], teacher: list[Tensor], scaling: float = DEFAULT_SCALING) -> Tensor:
    """scaling·Σ_m MSE(teacher_m, student_m), each MSE the mean over the batch and the feature dimensions."""
    return scaling * sum(F.mse_loss(t.float(), s.float()) for s, t in zip(student, teacher))


def umt_loss(logits0: Tensor, logits1: Tensor, y: Tensor, student: list[Tensor], teacher: list[Tensor],
             scaling: float = DEFAULT_SCALING, task: str = "fused") -> Tensor:
    """The run's task loss (CE(ŷ) by default) plus the distillation term."""
    return task_loss(task, logits0, logits1, y) + distillation_loss(student, teacher, scaling)


@contextlib.contextmanager
def head_input(net: SingleViewNet) -> Iterator[list[Tensor | None]]:
    """Within the block, every forward of the single-view `net` stores the input of its fc in the yielded list."""
    captured: list[Tensor | None] = [None]
    handle = net.branch.fc.register_forward_pre_hook(lambda module, inputs: captured.__setitem__(0, inputs[0]))
    try:
        yield captured
    finally:
        handle.remove()


def parse_teachers(text: str) -> list[Path]:
    """"RUN0,RUN1" → the two run folders."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"umt_teachers names two single-view run folders, RUN0,RUN1 (the first and second of "
                        f"views), got {text!r}")
    return [Path(p) for p in parts]


def load_teacher(run_dir: Path, slot: int, cfg, classes: list[str]) -> SingleViewNet:
    """The single-view network of `run_dir`'s best.pt, checked against the student's run `cfg` (data, views, slot,
    width, classes), frozen, in eval mode, on the CPU. (The run folder's files are read by name here: mmtm.training.run
    imports the config, which imports this module.)"""
    best, data_json = Path(run_dir) / "best.pt", Path(run_dir) / "data.json"
    view = cfg.views[slot]
    if not best.is_file():
        raise UserError(f"{run_dir}: no best.pt, so no teacher for view {view}; train one first with "
                        f"`mmtm train --single-view {view}` on this run's data and views")
    ckpt = load_checkpoint(best)
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    try:
        digest = json.loads(data_json.read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        digest = None
    wrong = [f"{what} {got!r}, not {want!r}" for what, got, want in (
        ("single_view", saved.get("single_view"), slot), ("views", list(saved.get("views", [])), list(cfg.views)),
        ("width", saved.get("width"), cfg.width), ("classes", ckpt.get("classes"), classes),
        ("data digest", digest, data_digest(cfg.data))) if got != want]
    if wrong:
        raise UserError(f"{best}: cannot teach view {view} of this run: it was trained with {'; '.join(wrong)}; "
                        f"give the single-view run of view {view} on this run's data and views")
    net = SingleViewNet(len(classes), width=cfg.width, slot=slot)
    load_weights(net, ckpt, best)
    net.eval()
    net.requires_grad_(False)
    return net


class UMTPolicy(StepPolicy):
    """UMT in the one training loop: every step regular; the forward captures both branches' head inputs, the
    teachers see the same views without gradient, and the distillation term is added to the task loss."""

    name = "umt"
    default_loss = "fused"

    def __init__(self, teachers: list[Path], scaling: float = DEFAULT_SCALING, cfg=None):
        self.teacher_dirs, self.scaling, self.cfg = teachers, scaling, cfg
        self.teachers: list[SingleViewNet] | None = None  # loaded before the first epoch this process trains
        self.compute = None
        self._views: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_config(cls, cfg) -> "UMTPolicy":
        return cls(parse_teachers(cfg.umt_teachers), cfg.umt_scaling, cfg)

    def start_epoch(self, epoch: int, context: EpochContext) -> None:
        if self.teachers is None:
            classes = list(context.loader("train", True).classes)
            self.teachers = [context.compute.place(load_teacher(d, slot, self.cfg, classes))
                             for slot, d in enumerate(self.teacher_dirs)]
            self.compute = context.compute

    def inputs(self, view0: Tensor, view1: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        self._views = (view0, view1)  # what the teachers see, in `loss`
        return view0, view1

    def capture(self, net):
        return branch_features(net)

    @torch.no_grad()
    def teacher_features(self, view0: Tensor, view1: Tensor) -> list[Tensor]:
        out = []
        for teacher in self.teachers:
            with head_input(teacher) as captured, self.compute.autocast():
                teacher(self.compute.layout(view0), self.compute.layout(view1))
            out.append(captured[0].float())
        return out

    def loss(self, logits0: Tensor, logits1: Tensor, y: Tensor, features, epoch: int) -> Tensor:
        teacher = self.teacher_features(*self._views)
        self._views = None
        return umt_loss(logits0, logits1, y, list(features), teacher, self.scaling, self.task)

