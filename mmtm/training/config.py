"""Run configuration: a preset sets defaults, a JSON config file overrides them, CLI flags override both.

The resolved config is saved as `RUN/config.json`; `mmtm train --config RUN/config.json` repeats a run.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from mmtm.loaders.dataset import DatasetError, open_dataset
from mmtm.loaders.device import check_device_name
from mmtm.loaders.errors import UserError
from mmtm.loaders.factory import BACKENDS
from mmtm.science.fusion import GATES, bottleneck_units
from mmtm.training.hardware import AMP_SETTINGS, CHANNELS_LAST_SETTINGS, CUDA_GRAPH_SETTINGS
from mmtm.methods import agm, g_blending, mmpareto, moddrop, ogm_ge, opm, pmr, relearn, umt
from mmtm.science.network import LOSSES, mmtm_channels
from mmtm.training.policy import ALPHA, REBALANCE_PARAMS, REBALANCE_STEPS, WARMUP_EPOCHS
from mmtm.training.presets import AUTO, PRESETS, chosen
from mmtm.training.registry import POLICIES
from mmtm.science.speed import SIGNALS
from mmtm.training.schedule import PLATEAU_ON, SCHEDULES

FLOAT32_MAX = 3.4028234663852886e38  # a learning rate lives in a float32 tensor on the GPU
SEED_MAX = 2**64 - 1                 # torch seeds its generators with an unsigned 64-bit integer


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    policy: str = "vanilla"                 # a name in mmtm.training.registry.POLICIES
    views: tuple[int, int] = (0, 6)         # docs/science.md §5: v001 and v007, "front" and "rear"; resolve() takes
                                            # the data's dataset.json `default_views` when none is given
    # model (docs/science.md §1); width 64 is torchvision's ResNet-18, smaller widths keep its structure
    width: int = 64
    mmtm_ratio: int = 4
    gate: str = "sigmoid"                   # "sigmoid" (official code) or "2sigmoid" (paper)
    loss: str = "auto"                      # heads: CE(ŷ0)+CE(ŷ1) | fused: CE(ŷ) | auto: the policy's authors' choice
    single_view: int | None = None          # 0 or 1: the single-view baseline, one branch on views[0] or views[1]
    #                                         (`--single-view VIEW` takes the view itself and records its slot here)
    # optimisation (docs/science.md §5)
    epochs: int = 300
    batch_size: int = 8
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "plateau"               # plateau (the paper's) | cosine (to min_lr over the epochs)
    plateau_factor: float = 0.3
    plateau_patience: int = 10
    plateau_threshold: float = 1e-3         # relative, as the official code
    plateau_on: str = "all"                 # the loss the plateau schedule watches: all steps (official) | regular
    min_lr: float = 1e-6
    early_stop_epochs: int = 5              # stop once this many epochs reached 100% train accuracy; 0 = never
    precise_bn: int = 0                     # batches recomputing BatchNorm statistics before each validation; 0 = off
    # balanced training (docs/science.md §3-4)
    alpha: float = ALPHA
    rebalance_steps: int = REBALANCE_STEPS
    warmup_epochs: int = WARMUP_EPOCHS
    rebalance_params: str = "all"           # "all" (official code) or "slow" (only the slow branch's θ)
    speed_window: int = 100                 # K of the windowed d_speed view (last K regular steps)
    speed_signal: str = "cumulative"        # the d_speed view the policy reads: cumulative (official) | window
    speed_from_epoch: int = 0               # the cumulative signal counts regular steps from this epoch (official: 0)
    # the remedies of other papers (mmtm/methods/), their published defaults
    ogm_alpha: float = ogm_ge.DEFAULT_ALPHA
    ogm_start_epoch: int = ogm_ge.MODULATION_STARTS
    ogm_end_epoch: int | None = None        # last modulated epoch; None: resolved from ogm_end_fraction
    ogm_end_fraction: float | None = None   # the window's end as a share of the epochs; None: the authors' (51/100)
    gb_interval: int = g_blending.DEFAULT_INTERVAL
    gb_estimator: str = "published"         # published (warm-started copies, ahead) | retrospective
    moddrop_p: float = moddrop.DEFAULT_P
    pmr_alpha: float = pmr.DEFAULT_ALPHA
    pmr_momentum: float = pmr.DEFAULT_MOMENTUM
    pmr_start_epoch: int = pmr.MODULATION_STARTS
    pmr_end_epoch: int | None = None        # last epoch with the PCE term; None: resolved from pmr_end_fraction
    pmr_end_fraction: float | None = None   # the window's end as a share of the epochs; None: the authors' (71/130)
    mmpareto_gamma: float = mmpareto.DEFAULT_GAMMA
    agm_alpha: float = agm.DEFAULT_ALPHA
    agm_end_epoch: int | None = None        # last modulated epoch; None: resolved from agm_end_fraction
    agm_end_fraction: float | None = None   # the window's end as a share of the epochs; None: the authors' (20/100)
    opm_q_base: float = opm.DEFAULT_Q_BASE
    opm_lambda: float = opm.DEFAULT_LAMBDA
    opm_p_exe: float = opm.DEFAULT_P_EXE
    opm_warmup_epochs: int = opm.DEFAULT_WARMUP_EPOCHS
    opm_ogm: str = "off"                    # the journal code's OGM options: off | ogm | ogm-ge
    opm_ogm_coeff: str = "tanh"             # tanh (OGM's 1 − tanh(α·ρ)) | plus (OGM+: the weak modality ×4)
    opm_ogm_alpha: float = opm.DEFAULT_OGM_ALPHA
    opm_ogm_end_epoch: int | None = None    # last modulated epoch; None: resolved from opm_ogm_end_fraction
    opm_ogm_end_fraction: float | None = None  # the window's end as a share of the epochs; None: the authors' (81/100)
    umt_teachers: str = ""                  # umt: "RUN0,RUN1", the single-view runs of the first and second view
    umt_scaling: float = umt.DEFAULT_SCALING
    relearn_interval: int | None = None     # re-learn after every N-th epoch; None: the script's 20 of 90, scaled
    relearn_count: int = relearn.DEFAULT_COUNT
    relearn_lambda: float = relearn.DEFAULT_LAMBDA
    # reproducibility and hardware
    seed: int = 777
    device: str = "auto"                    # auto | cpu | cuda[:index]
    loader: str = "auto"                    # auto | dali | torch
    num_threads: int = 2                    # loader threads per process; 0: the torch loader reads in-process
    cpu_threads: int | None = None          # torch's CPU threads (None: torch's default); results depend on it
    amp: str = "auto"                       # auto (bf16 on cuda) | off
    channels_last: str = "auto"             # auto (on cuda) | on | off
    cuda_graphs: str = "auto"               # auto (CUDA-graph steps on one GPU) | off
    max_steps_per_epoch: int | None = None  # cap for quick looks and benchmarks; None = whole epoch

    def validate(self) -> "TrainConfig":
        if self.single_view is not None:
            if self.single_view not in (0, 1) or self.policy != "vanilla" or self.loss == "heads":
                raise UserError(f"single_view is 0 or 1 (the first or second of views) and trains one branch with "
                                f"policy vanilla and loss fused (CE of its one head), got single_view "
                                f"{self.single_view!r}, policy {self.policy!r}, loss {self.loss!r}")
            self.loss = "fused"
        if self.policy in POLICIES and self.loss == "auto":  # resolved here, so config.json names the loss trained
            self.loss = POLICIES[self.policy].default_loss
        for name, choices in (("policy", POLICIES), ("loss", LOSSES), ("gate", GATES),
                              ("rebalance_params", REBALANCE_PARAMS),
                              ("loader", ("auto", *BACKENDS)), ("amp", AMP_SETTINGS),
                              ("channels_last", CHANNELS_LAST_SETTINGS), ("cuda_graphs", CUDA_GRAPH_SETTINGS),
                              ("speed_signal", SIGNALS),
                              ("plateau_on", PLATEAU_ON), ("schedule", SCHEDULES),
                              ("gb_estimator", g_blending.ESTIMATORS), ("opm_ogm", opm.OGM_MODES),
                              ("opm_ogm_coeff", opm.OGM_COEFFS)):
            if getattr(self, name) not in choices:
                raise UserError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.policy == "g-blending" and self.gb_estimator == "published" and self.loss != "fused":
            # config.json must name the loss trained: the blend from the first step, copies on CE(ŷ)
            raise UserError(f"g-blending's published estimator trains the blend of ŷ0, ŷ1, ŷ from the first step and "
                            f"its copies with CE(ŷ), so loss {self.loss!r} would not be what was trained; use loss "
                            f"fused, or gb_estimator retrospective (which trains the loss until its first weights)")
        if self.policy == "mmpareto" and self.loss != "fused":
            raise UserError(f"mmpareto trains CE(ŷ) + CE(ŷ0) + CE(ŷ1), its multi-modal term fused, so loss "
                            f"{self.loss!r} would not be what was trained; use loss fused")
        if self.policy == "agm" and self.loss != "fused":
            raise UserError(f"agm trains CE of its modulated fused output, so loss {self.loss!r} would not be what "
                            f"was trained; use loss fused")
        if (self.policy == "umt") != bool(self.umt_teachers):
            raise UserError("policy umt needs umt_teachers (--teachers RUN0,RUN1: the single-view runs of the first "
                            "and second of views, e.g. compare's baselines) and no other policy takes them, got "
                            f"policy {self.policy!r} with umt_teachers {self.umt_teachers!r}")
        if self.umt_teachers:
            umt.parse_teachers(self.umt_teachers)
        if len(self.views) != 2 or self.views[0] == self.views[1]:
            raise UserError(f"--views needs two different view indices, got {self.views}")
        for v in self.views:  # the upper bound is the data's (check_views)
            if v < 0:
                raise UserError(f"view index {v} is out of range; views are numbered from 0")
        for name, least in (("epochs", 1), ("batch_size", 1), ("width", 1), ("mmtm_ratio", 1), ("rebalance_steps", 1),
                            ("num_threads", 0), ("cpu_threads", 1), ("plateau_patience", 0), ("early_stop_epochs", 0),
                            ("warmup_epochs", 0), ("seed", 0), ("precise_bn", 0), ("speed_window", 1),
                            ("max_steps_per_epoch", 1),
                            ("momentum", 0), ("weight_decay", 0), ("min_lr", 0), ("alpha", 0),
                            ("plateau_threshold", 0), ("speed_from_epoch", 0), ("gb_interval", 1), ("ogm_alpha", 0),
                            ("ogm_start_epoch", 0), ("pmr_alpha", 0), ("pmr_start_epoch", 0), ("mmpareto_gamma", 0),
                            ("agm_alpha", 0), ("opm_lambda", 0), ("opm_warmup_epochs", 0), ("opm_ogm_alpha", 0),
                            ("umt_scaling", 0), ("relearn_interval", 1), ("relearn_count", 0), ("relearn_lambda", 0)):
            value = getattr(self, name)
            if value is not None and not least <= value < math.inf:  # written so that nan fails too
                raise UserError(f"{name} must be {f'at least {least}' if math.isfinite(value) else 'finite'}, "
                                f"got {value}")
        if self.batch_size < 2:
            raise UserError("batch_size must be at least 2 (BatchNorm needs two samples)")
        if not 0 < self.lr <= FLOAT32_MAX:
            raise UserError(f"lr must be positive and finite in float32 (at most {FLOAT32_MAX:.4g}), got {self.lr}")
        if self.min_lr > self.lr:
            raise UserError(f"min_lr ({self.min_lr}) is above lr ({self.lr}): the schedule would raise the learning "
                            "rate; give a min_lr of at most lr")
        if self.seed > SEED_MAX:
            raise UserError(f"seed must be at most {SEED_MAX} (64 bits), got {self.seed}")
        if self.single_view is None and (least := min(bottleneck_units(c, c, self.mmtm_ratio)
                                                      for c in mmtm_channels(self.width))) < 1:
            raise UserError(f"mmtm_ratio {self.mmtm_ratio} leaves the first MMTM a bottleneck of {least} units at "
                            f"width {self.width}; use an mmtm_ratio of at most {4 * min(mmtm_channels(self.width))}")
        if not 0 < self.plateau_factor < 1:
            raise UserError(f"plateau_factor must be between 0 and 1, got {self.plateau_factor}")
        for prefix, share in (("ogm", ogm_ge.WINDOW_SHARE), ("pmr", pmr.WINDOW_SHARE), ("agm", agm.WINDOW_SHARE),
                              ("opm_ogm", opm.OGM_WINDOW_SHARE)):
            self._resolve_window(prefix, share)
        for first, last in (("ogm_start_epoch", "ogm_end_epoch"), ("pmr_start_epoch", "pmr_end_epoch")):
            if getattr(self, last) < getattr(self, first):
                raise UserError(f"{last} ({getattr(self, last)}) is before {first} ({getattr(self, first)})")
        if not 0 <= self.moddrop_p <= 1 or not 0 <= self.pmr_momentum < 1:
            raise UserError(f"moddrop_p must be in [0, 1] and pmr_momentum in [0, 1), got {self.moddrop_p} "
                            f"and {self.pmr_momentum}")
        for name in ("opm_q_base", "opm_p_exe"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.relearn_interval is None:
            self.relearn_interval = relearn.interval_for(self.epochs)
        check_device_name(self.device)
        return self

    def _resolve_window(self, prefix: str, share: float) -> None:
        """`{prefix}_end_epoch` from `{prefix}_end_fraction` (default `share`) when no end epoch is given; both given
        (a config.json records the epoch it resolved) must agree, or a reader could not tell which one the run used."""
        epoch_key, fraction_key = f"{prefix}_end_epoch", f"{prefix}_end_fraction"
        epoch, fraction = getattr(self, epoch_key), getattr(self, fraction_key)
        if fraction is not None and not 0 < fraction <= 1:
            raise UserError(f"{fraction_key} must be in (0, 1], got {fraction}")
        if epoch is not None and epoch < 0:
            raise UserError(f"{epoch_key} must be at least 0, got {epoch}")
        if epoch is None:
            fraction = share if fraction is None else fraction
            setattr(self, fraction_key, fraction)
            setattr(self, epoch_key, window_end(fraction, self.epochs))
        elif fraction is not None and epoch != window_end(fraction, self.epochs):
            raise UserError(f"{epoch_key} {epoch} disagrees with {fraction_key} {fraction} of {self.epochs} epochs "
                            f"(last epoch {window_end(fraction, self.epochs)}); give one of them")


def window_end(fraction: float, epochs: int) -> int:
    """The last (0-based) epoch of a window from epoch 0 over `fraction` of `epochs`, rounded to the nearest epoch
    (half up), at least epoch 0: 0.51 of 100 → 50 (OGM-GE's 0..50), 71/130 of 130 → 70 (PMR's 0..70)."""
    return max(1, math.floor(fraction * epochs + 0.5)) - 1


# A modulation window's end, as an epoch or as a share of the run: give one; config.json records both.
WINDOW_ENDS = (("ogm_end_epoch", "ogm_end_fraction"), ("pmr_end_epoch", "pmr_end_fraction"),
               ("agm_end_epoch", "agm_end_fraction"), ("opm_ogm_end_epoch", "opm_ogm_end_fraction"))


def _coerce(cfg) -> dict:
    """Known keys only, each of its field's type (a config file may hold anything JSON can)."""
    if not isinstance(cfg, dict):
        raise UserError(f"a config must be a JSON object of settings, not {type(cfg).__name__}")
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise UserError(f"unknown config keys: {', '.join(unknown)}")
    return {name: as_field_type(name, value, fields[name]) for name, value in cfg.items()}


def as_field_type(name: str, value, kind: str):
    """`value` as the field type `kind` (the annotation's text), or a UserError naming the setting."""
    if kind.endswith(" | None") and value is None:
        return None
    base = kind.removesuffix(" | None")

    def whole(v) -> bool:  # JSON's true/false are ints to Python, but no setting means them as numbers
        return isinstance(v, int) and not isinstance(v, bool)

    if base == "int" and whole(value):
        return value
    if base == "float" and (whole(value) or isinstance(value, float)):
        return float(value)
    if base == "str" and isinstance(value, str):
        return value
    if base == "tuple[int, int]" and isinstance(value, (list, tuple)) and all(map(whole, value)):
        return tuple(value)
    wanted = {"int": "a whole number", "float": "a number", "str": "a string",
              "tuple[int, int]": "two view indices like [0, 6]"}[base]
    raise UserError(f"{name} must be {wanted}, got {value!r}")


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        return _coerce(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: config file cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def resolve(preset: str = "paper", config_file: str | Path | None = None, *, single_view_on: int | None = None,
            **overrides) -> TrainConfig:
    """Preset defaults < config file < explicit overrides (None means "not given"). `single_view_on`: the view
    number of `--single-view`, one of the resolved views, recorded as its slot in `single_view`."""
    if preset == AUTO:
        preset = chosen(preset, overrides.get("device") or "auto")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {', '.join((AUTO, *PRESETS))}")
    values = dict(PRESETS[preset])
    if config_file is not None:
        saved = load_config_file(config_file)
        for epoch_key, fraction_key in WINDOW_ENDS:
            if saved.get(fraction_key) is not None and saved.get(epoch_key) is not None:
                # a config.json records the epoch its fraction gave; checked, then resolved anew for this run's epochs
                epochs = saved.get("epochs", values.get("epochs", TrainConfig.epochs))
                if saved[epoch_key] != window_end(saved[fraction_key], epochs):
                    raise UserError(f"{config_file}: {epoch_key} {saved[epoch_key]} disagrees with {fraction_key} "
                                    f"{saved[fraction_key]} of {epochs} epochs; give one of them")
                del saved[epoch_key]
        values.update(saved)
    given = _coerce({k: v for k, v in overrides.items() if v is not None})
    for pair in WINDOW_ENDS:
        named = [key for key in pair if key in given]
        if len(named) == 2:
            raise UserError(f"give {named[0]} or {named[1]}, not both")
        for key in pair:
            if named and key not in named:  # one end given here replaces the other form from the file or preset
                values.pop(key, None)
    values.update(given)
    dataset = _dataset(values.get("data"))
    if dataset is not None and "views" not in values:
        values["views"] = dataset.default_views
    if single_view_on is not None:
        views = tuple(values.get("views", TrainConfig.views))
        if single_view_on not in views:
            # --single-view used to take the slot (0 or 1): `--single-view 1` meant the second of --views.
            was = (f" (0 and 1 no longer mean the first and second of them: for view {views[single_view_on]} "
                   f"write --single-view {views[single_view_on]})" if single_view_on in (0, 1) and len(views) == 2
                   else "")
            raise UserError(f"--single-view takes the view number itself, one of --views "
                            f"{','.join(map(str, views))}, got {single_view_on}{was}")
        values["single_view"] = views.index(single_view_on)
    cfg = TrainConfig(**values).validate()
    if dataset is not None:
        for v in cfg.views:
            dataset.check_view(v)
    return cfg


def _dataset(data: str | None):
    """The prepared dataset at `data`, or None where there is none to read (training then names the problem)."""
    if not data:
        return None
    try:
        return open_dataset(data)
    except DatasetError:
        return None


def to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["views"] = list(cfg.views)
    return d


def from_dict(d: dict) -> TrainConfig:
    return TrainConfig(**_coerce(dict(d))).validate()
