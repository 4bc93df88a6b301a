import math
from collections import Counter

from mmtm.training.config import resolve
from mmtm.science.fusion import REBALANCE_M0, REBALANCE_M1, REGULAR
from mmtm.training.policy import BalancedPolicy, FlippedPolicy, RandomPolicy, VanillaPolicy
from mmtm.training.registry import POLICIES, make_policy

ALPHA, Q = 0.01, 5
R, M0, M1 = REGULAR, REBALANCE_M0, REBALANCE_M1


def run(policy, d_speeds, epoch):
    """The training loop's use of a policy; returns the mode of every step."""
    modes = []
    for d in d_speeds:
        mode = policy.next_mode(epoch)
        modes.append(mode)
        policy.observe(mode, d, epoch)
    return modes


def test_balanced_ignores_warmup():
    policy = BalancedPolicy(ALPHA, Q, warmup_epochs=1)
    assert run(policy, [1.0, -1.0, 1.0], epoch=0) == [R, R, R]
    assert policy.next_mode(1) == R


def test_balanced_positive_d_rebalances_m0_for_exactly_Q_steps_then_may_refire():
    policy = BalancedPolicy(ALPHA, Q, warmup_epochs=1)
    # d during re-balancing steps is ignored (they are not regular steps)
    modes = run(policy, [0.02] + [-1.0] * Q + [-0.02] + [0.0] * Q + [0.0], epoch=1)
    assert modes == [R] + [M0] * Q + [R] + [M1] * Q + [R]


def test_balanced_threshold_and_nan_do_nothing():
    policy = BalancedPolicy(ALPHA, Q, warmup_epochs=1)
    assert run(policy, [ALPHA, -ALPHA, 0.0, math.nan, 0.005], epoch=3) == [R] * 5
    assert run(policy, [-0.5, 0.0], epoch=3) == [R, M1]


def test_flipped_fires_like_balanced_but_rebalances_the_other_branch():
    d = [0.02] + [-1.0] * Q + [-0.02] + [0.0] * Q + [0.005, math.nan, 0.5]
    balanced = run(BalancedPolicy(ALPHA, Q, warmup_epochs=1), d, epoch=1)
    flipped = run(FlippedPolicy(ALPHA, Q, warmup_epochs=1), d, epoch=1)
    assert flipped == [R] + [M1] * Q + [R] + [M0] * Q + [R, R, R]
    assert [{M0: M1, M1: M0}.get(m, m) for m in balanced] == flipped
    assert run(FlippedPolicy(ALPHA, Q, warmup_epochs=1), [1.0, -1.0], epoch=0) == [R, R]  # warm-up


def test_balanced_state_round_trip_mid_rebalance(roundtrip):
    d = [0.3, 0, 0, 0.2, -0.2, 0, 0, 0, 0, -0.3, 0, 0, 0]
    a = BalancedPolicy(ALPHA, Q)
    run(a, d[:3], epoch=1)
    b = BalancedPolicy(ALPHA, Q)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert run(a, d[3:], epoch=1) == run(b, d[3:], epoch=1)


def test_random_regular_in_warmup_then_uniform():
    policy = RandomPolicy(warmup_epochs=1, seed=3)
    assert set(run(policy, [0.0] * 200, epoch=0)) == {R}
    counts = Counter(run(policy, [0.0] * 3000, epoch=1))
    assert set(counts) == {R, M0, M1}
    assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in counts.values())


def test_random_same_seed_agrees_and_next_mode_is_stable_within_a_step():
    a, b = RandomPolicy(seed=7), RandomPolicy(seed=7)
    assert a.next_mode(2) == a.next_mode(2)
    assert run(a, [0.0] * 50, epoch=2) == run(b, [0.0] * 50, epoch=2)
    assert run(RandomPolicy(seed=8), [0.0] * 50, epoch=2) != run(RandomPolicy(seed=7), [0.0] * 50, epoch=2)


def test_random_state_round_trip_gives_identical_continuation(roundtrip):
    a = RandomPolicy(seed=1)
    run(a, [0.0] * 37, epoch=1)
    b = RandomPolicy(seed=999)
    b.load_state_dict(roundtrip(a.state_dict()))
    assert run(a, [0.0] * 100, epoch=1) == run(b, [0.0] * 100, epoch=1)


def test_vanilla_and_the_registry_build_policies_from_the_config():
    assert run(VanillaPolicy(), [1.0, -1.0, math.nan], epoch=5) == [R, R, R]
    assert isinstance(make_policy(resolve("paper")), VanillaPolicy)
    balanced = make_policy(resolve("paper", policy="balanced", alpha=0.1, rebalance_steps=2, warmup_epochs=0))
    assert (balanced.name, balanced.alpha, balanced.rebalance_steps, balanced.warmup_epochs) == ("balanced", 0.1, 2, 0)
    random_policy = make_policy(resolve("paper", policy="random", seed=4))
    assert random_policy.name == "random"
    assert run(random_policy, [0.0] * 20, 1) == run(RandomPolicy(seed=4), [0.0] * 20, 1)
    assert set(POLICIES) == {"vanilla", "balanced", "random", "flipped", "ogm-ge", "g-blending", "moddrop", "pmr",
                            "mmpareto", "agm", "opm", "umt", "relearn"}
    assert isinstance(make_policy(resolve("paper", policy="flipped")), FlippedPolicy)
    assert all(name == cls.name for name, cls in POLICIES.items())
