"""mmtm: MMTM two-view networks, the greedy-learning metrics (d_util, d_speed) and balanced training.

The Python API (docs/api.md), what the commands run:

- prep: `prepare` (MVCNN renders or meshes), `prepare_synthetic`, `prepare_pairs` (a CSV of two images per object);
  `open_dataset`, `two_view_loader` to read a prepared folder;
- train: `resolve` (preset < config file < keyword overrides → `TrainConfig`), then `fit`;
- eval-cur: `evaluate_cur`; report and compare: `write_report`, `run_comparison`, `collect`;
- CUR and CLS on your own two-branch network: `MMTM` (with its modes `REGULAR`, `FLOW_OFF`), `collect_mean_squeeze`,
  `cur_from_accuracies`, `SpeedMeter`, and the formulas `mu`, `conditional_speed`, `d_speed`,
  `conditional_utilization`, `d_util`; `TwoViewMMTMNet` is the paper's network.

Names are imported when first used, so `import mmtm` loads neither torch nor anything else heavy.
"""
from __future__ import annotations

import importlib
import os

# Installed, mmtm.cli and mmtm.loaders are mmtm/cli and mmtm/loaders; a source checkout keeps them at the top level
# beside mmtm/, so there (and only there) they are found by also searching the checkout's root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(__path__[0], "loaders")) and all(
        os.path.isfile(os.path.join(_ROOT, package, "__init__.py")) for package in ("cli", "loaders")):
    __path__.append(_ROOT)

# name → the module that defines it
_API = {
    "prepare": "mmtm.loaders.prep.build", "prepare_synthetic": "mmtm.loaders.prep.build",
    "prepare_pairs": "mmtm.loaders.prep.pairs", "open_dataset": "mmtm.loaders.dataset",
    "two_view_loader": "mmtm.loaders.factory", "UserError": "mmtm.loaders.errors",
    "TrainConfig": "mmtm.training.config", "resolve": "mmtm.training.config", "fit": "mmtm.training.loop",
    "evaluate_cur": "mmtm.analysis.eval_cur", "write_report": "mmtm.analysis.report",
    "run_comparison": "mmtm.analysis.compare", "collect": "mmtm.analysis.compare",
    "MMTM": "mmtm.science.fusion", "REGULAR": "mmtm.science.fusion", "FLOW_OFF": "mmtm.science.fusion",
    "TwoViewMMTMNet": "mmtm.science.network",
    "collect_mean_squeeze": "mmtm.science.utilization", "cur_from_accuracies": "mmtm.science.utilization",
    "SpeedMeter": "mmtm.science.speed",
    "mu": "mmtm.science.formulas", "conditional_speed": "mmtm.science.formulas", "d_speed": "mmtm.science.formulas",
    "conditional_utilization": "mmtm.science.formulas", "d_util": "mmtm.science.formulas",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mmtm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
