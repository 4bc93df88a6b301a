"""Hardware: DDP set-up and the one rule for how the network runs on a device (bf16 autocast, channels-last),
used alike by training, eval-cur and bench, and the rule for CUDA-graph training steps (training, `mmtm info`).
The device itself comes from `mmtm.loaders.device.resolve_device`."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

AMP_SETTINGS = ("auto", "off")                    # auto: bf16 autocast on CUDA
CHANNELS_LAST_SETTINGS = ("auto", "on", "off")    # auto: on CUDA only (no gain measured on CPU)
CUDA_GRAPH_SETTINGS = ("auto", "off")             # auto: CUDA-graph steps on CUDA (mmtm/training/cuda_graphs.py)


@dataclass(frozen=True)
class Compute:
    """Where and how the network computes. `amp` and `channels_last` are decided once, by `Compute.of`."""
    device: torch.device
    amp: bool = False
    channels_last: bool = False

    @classmethod
    def of(cls, device: torch.device, *, amp: str = "auto", channels_last: str = "auto") -> "Compute":
        cuda = device.type == "cuda"
        return cls(device, amp=amp == "auto" and cuda,
                   channels_last=channels_last == "on" or (channels_last == "auto" and cuda))

    def place(self, net: torch.nn.Module) -> torch.nn.Module:
        """Move the network to the device, in the memory layout the inputs will have."""
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def fp32(self) -> "Compute":
        """The same device and layout without autocast. Metrics (validation accuracy, CUR) are computed in float32:
        under bf16 borderline samples could flip, on GPU runs only."""
        return dataclasses.replace(self, amp=False)

    def autocast(self):
        """bf16 autocast on CUDA (tensor cores); full precision elsewhere. Without autocast's weight cache: each
        weight is cast once per forward anyway, and CUDA-graph capture needs the cache off."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()


def graph_steps(setting: str, device: torch.device, world_size: int, policy_allows: bool) -> bool:
    """Whether training steps run as captured CUDA graphs: asked for (auto), on CUDA, in one process (DDP runs
    eager steps), under a policy whose steps can be captured."""
    return setting == "auto" and device.type == "cuda" and world_size == 1 and policy_allows


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        """Each process of a multi-GPU run drives the GPU of its local rank."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world_size > 1 else device


def setup_distributed(device_name: str) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local)
