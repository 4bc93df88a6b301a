import math

import pytest
import torch

from mmtm.fusion import REGULAR, REBALANCE_M0
from mmtm.network import TwoViewMMTMNet, two_head_loss
from mmtm.speed import GROUPS, SpeedMeter


def direct_mu(params):
    grad = sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)
    return grad / sum(float(p.detach().double().square().sum()) for p in params)


def test_two_step_toy_run_matches_direct_computation():
    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    groups = net.param_groups()
    meter = SpeedMeter(groups)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert math.isnan(meter.d_speed)  # before the first regular step
    M = dict.fromkeys(GROUPS, 0.0)
    for mode in (REGULAR, REGULAR, REBALANCE_M0):
        opt.zero_grad(set_to_none=True)
        x0, x1, y = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
        two_head_loss(*net(x0, x1, mode), y).backward()
        mu = meter.measure()
        expected = {g: direct_mu(groups[g]) for g in GROUPS}
        assert mu == pytest.approx(expected, rel=1e-5)
        meter.update(mu, regular=mode == REGULAR)
        if mode == REGULAR:
            M = {g: M[g] + expected[g] for g in GROUPS}
        opt.step()
    # the re-balancing step (third) is not accumulated
    assert meter.regular_steps == 2
    assert meter.M == pytest.approx(M, rel=1e-5)
    s_m1_m0 = math.log10(M["fusion0"] / M["theta0"])
    s_m0_m1 = math.log10(M["fusion1"] / M["theta1"])
    assert meter.s_m1_m0 == pytest.approx(s_m1_m0, abs=1e-5)
    assert meter.s_m0_m1 == pytest.approx(s_m0_m1, abs=1e-5)
    assert meter.d_speed == pytest.approx(s_m1_m0 - s_m0_m1, abs=1e-5)


def test_missing_grads_count_as_zero():
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    q.grad = torch.full((3,), 2.0)
    meter = SpeedMeter({"theta0": [p], "theta1": [q], "fusion0": [p, q], "fusion1": [q]})
    assert meter.measure() == pytest.approx({"theta0": 0.0, "theta1": 4.0, "fusion0": 12 / 5, "fusion1": 4.0})


def mus(i):
    return {"theta0": 1.0 * i, "theta1": 2.0 * i, "fusion0": 0.1 * i, "fusion1": 0.5 * i}


def test_windowed_variant_sums_the_last_K_regular_steps():
    meter = SpeedMeter(dict.fromkeys(GROUPS, []), window=2)
    for i, regular in ((1, True), (2, True), (3, True), (100, False)):
        meter.update(mus(i), regular)
    assert meter.M == pytest.approx({g: mus(2)[g] + mus(3)[g] for g in GROUPS})
    assert meter.d_speed == pytest.approx(math.log10(0.5 / 5) - math.log10(2.5 / 10))


@pytest.mark.parametrize("window", [None, 3])
def test_state_round_trip_continues_exactly(window, roundtrip):
    a = SpeedMeter(dict.fromkeys(GROUPS, []), window=window)
    for i in range(1, 6):
        a.update(mus(i * 0.37), regular=i != 4)
    b = SpeedMeter(dict.fromkeys(GROUPS, []), window=window)
    b.load_state_dict(roundtrip(a.state_dict()))
    for i in range(6, 9):
        a.update(mus(i * 0.37), regular=True)
        b.update(mus(i * 0.37), regular=True)
        assert (a.M, a.d_speed, a.regular_steps) == (b.M, b.d_speed, b.regular_steps)
    with pytest.raises(ValueError):
        SpeedMeter(dict.fromkeys(GROUPS, []), window=7).load_state_dict(a.state_dict())


def test_all_four_groups_are_required():
    with pytest.raises(ValueError, match="fusion1"):
        SpeedMeter({"theta0": [], "theta1": [], "fusion0": []})
