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

# name → the module that defines it
_API = {
    "prepare": "loaders.prep.build", "prepare_synthetic": "loaders.prep.build", "prepare_pairs": "loaders.prep.pairs",
    "open_dataset": "loaders.dataset", "two_view_loader": "loaders.factory", "UserError": "loaders.errors",
    "TrainConfig": "mmtm.config", "resolve": "mmtm.config", "fit": "mmtm.training",
    "evaluate_cur": "mmtm.eval_cur", "write_report": "mmtm.report",
    "run_comparison": "mmtm.compare", "collect": "mmtm.compare",
    "MMTM": "mmtm.fusion", "REGULAR": "mmtm.fusion", "FLOW_OFF": "mmtm.fusion", "TwoViewMMTMNet": "mmtm.network",
    "collect_mean_squeeze": "mmtm.utilization", "cur_from_accuracies": "mmtm.utilization",
    "SpeedMeter": "mmtm.speed",
    "mu": "mmtm.formulas", "conditional_speed": "mmtm.formulas", "d_speed": "mmtm.formulas",
    "conditional_utilization": "mmtm.formulas", "d_util": "mmtm.formulas",
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
