"""Every training policy by name: the paper's (mmtm/training/policy.py) and the remedies of other papers
(mmtm/methods/), all run by the one training loop and measured by the same CLS meter and eval-cur."""
from __future__ import annotations

from mmtm.methods.agm import AGMPolicy
from mmtm.methods.g_blending import GBlendingPolicy
from mmtm.methods.mmpareto import MMParetoPolicy
from mmtm.methods.moddrop import ModDropPolicy
from mmtm.methods.ogm_ge import OGMGEPolicy
from mmtm.methods.opm import OPMPolicy
from mmtm.methods.pmr import PMRPolicy
from mmtm.methods.relearn import ReLearnPolicy
from mmtm.methods.umt import UMTPolicy
from mmtm.training.policy import BalancedPolicy, FlippedPolicy, RandomPolicy, StepPolicy, VanillaPolicy

POLICIES: dict[str, type[StepPolicy]] = {p.name: p for p in (
    VanillaPolicy, BalancedPolicy, RandomPolicy, FlippedPolicy, OGMGEPolicy, GBlendingPolicy, ModDropPolicy, PMRPolicy,
    MMParetoPolicy, AGMPolicy, OPMPolicy, UMTPolicy, ReLearnPolicy)}


def make_policy(cfg) -> StepPolicy:
    """The policy `cfg.policy` names, with its hyper-parameters and task loss from the (validated) run config."""
    policy = POLICIES[cfg.policy].from_config(cfg)
    policy.task = cfg.loss
    return policy
