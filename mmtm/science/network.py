"""The two-view network of docs/science.md §1: two ResNet-18 branches fused by MMTMs after layer2, layer3, layer4.

Branch i: conv1 → bn1 → relu → maxpool → layer1 → layer2 → MMTM₂ → layer3 → MMTM₃ → layer4 → MMTM₄ → avgpool → fc.
Branch heads ŷ0, ŷ1 (each sees both views, through the MMTMs: they are not uni-modal); prediction ŷ = (ŷ0 + ŷ1)/2.
Task losses (`task_loss`): "heads" = CE(ŷ0,y) + CE(ŷ1,y), the Greedy paper's official code; "fused" = CE(ŷ,y), the
loss OGM-GE's and PMR's official code train their fused output with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from mmtm.science.fusion import MMTM, REGULAR

STAGES = ("layer2", "layer3", "layer4")  # the stages followed by an MMTM


class ResNet18(ResNet):
    """torchvision's ResNet-18 with channels w, 2w, 4w, 8w and fc = Linear(8w, num_classes).

    width=64 is torchvision.models.resnet18(num_classes=...) exactly: same modules, same init, and (module
    creation in the same order) the same weights for the same seed. Only torchvision's __init__ is restated, with
    the widths scaled; its BasicBlock, _make_layer and forward are reused.
    """

    def __init__(self, num_classes: int, width: int = 64):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64  # as _make_layer expects
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class TwoViewMMTMNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 64, ratio: int = 4, gate: str = "sigmoid"):
        super().__init__()
        self.branch0 = ResNet18(num_classes, width)
        self.branch1 = ResNet18(num_classes, width)
        self.mmtms = nn.ModuleList(MMTM(c, c, ratio, gate) for c in mmtm_channels(width))

    def forward(self, x0: Tensor, x1: Tensor, mode: str = REGULAR) -> tuple[Tensor, Tensor]:
        h0, h1 = _stem(self.branch0, x0), _stem(self.branch1, x1)
        for stage, mmtm in zip(STAGES, self.mmtms):
            h0, h1 = mmtm(getattr(self.branch0, stage)(h0), getattr(self.branch1, stage)(h1), mode)
        return _head(self.branch0, h0), _head(self.branch1, h1)

    def branch_params(self, i: int) -> list[nn.Parameter]:
        """θ_i: branch i's ResNet including its head (what a 'slow branch only' re-balancing step updates)."""
        return list((self.branch0, self.branch1)[i].parameters())

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The groups of docs/science.md §3: θ0, θ1, θ'0 = every excite_a + every squeeze, θ'1 = every excite_b +
        every squeeze."""
        squeeze = [p for m in self.mmtms for p in m.squeeze.parameters()]
        return {
            "theta0": self.branch_params(0),
            "theta1": self.branch_params(1),
            "fusion0": [p for m in self.mmtms for p in m.excite_a.parameters()] + squeeze,
            "fusion1": [p for m in self.mmtms for p in m.excite_b.parameters()] + squeeze,
        }


class SingleViewNet(nn.Module):
    """The single-view baseline: one branch of the two-view network (the same ResNet-18 with its head) on one view
    alone (`slot` 0 or 1 of the run's two views), no MMTM. Its one head stands in for both heads of the two-view
    interface — forward returns it twice, so ŷ = (ŷ0+ŷ1)/2 is that head and CE(ŷ) its loss — which lets the one
    training loop, evaluation and checkpoints serve it unchanged. It has no fusion parameters, so the CLS is nan."""

    def __init__(self, num_classes: int, width: int = 64, slot: int = 0):
        super().__init__()
        self.slot = slot
        self.branch = ResNet18(num_classes, width)
        self.mmtms = nn.ModuleList()

    def forward(self, x0: Tensor, x1: Tensor, mode: str = REGULAR) -> tuple[Tensor, Tensor]:
        logits = self.branch((x0, x1)[self.slot])
        return logits, logits

    def branch_params(self, i: int) -> list[nn.Parameter]:
        return list(self.branch.parameters())

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        params = list(self.branch.parameters())
        return {"theta0": params, "theta1": params, "fusion0": [], "fusion1": []}


def build_network(cfg, num_classes: int) -> TwoViewMMTMNet | SingleViewNet:
    """The network a run config describes (its width, MMTM ratio and gate; one branch for a single-view run)."""
    if cfg.single_view is not None:
        return SingleViewNet(num_classes, width=cfg.width, slot=cfg.single_view)
    return TwoViewMMTMNet(num_classes, width=cfg.width, ratio=cfg.mmtm_ratio, gate=cfg.gate)


def _stem(net: ResNet, x: Tensor) -> Tensor:
    return net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))


def _head(net: ResNet, h: Tensor) -> Tensor:
    return net.fc(torch.flatten(net.avgpool(h), 1))


def fused_logits(logits0: Tensor, logits1: Tensor) -> Tensor:
    """ŷ = (ŷ0 + ŷ1)/2."""
    return (logits0 + logits1) / 2


def two_head_loss(logits0: Tensor, logits1: Tensor, y: Tensor) -> Tensor:
    """CE(ŷ0, y) + CE(ŷ1, y): a sum, each CE a batch mean."""
    return F.cross_entropy(logits0, y) + F.cross_entropy(logits1, y)


def fused_loss(logits0: Tensor, logits1: Tensor, y: Tensor) -> Tensor:
    """CE(ŷ, y), ŷ = (ŷ0 + ŷ1)/2: the loss of the fused prediction alone."""
    return F.cross_entropy(fused_logits(logits0, logits1), y)


LOSSES = ("heads", "fused")


def task_loss(name: str, logits0: Tensor, logits1: Tensor, y: Tensor) -> Tensor:
    """The task loss a run's config names (`loss`): "heads" or "fused"."""
    return two_head_loss(logits0, logits1, y) if name == "heads" else fused_loss(logits0, logits1, y)


def mmtm_channels(width: int) -> tuple[int, int, int]:
    """The channels of each view at the three MMTMs (after layer2, layer3, layer4)."""
    return 2 * width, 4 * width, 8 * width
