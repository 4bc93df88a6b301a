import math

import pytest
import torch

from mmtm.loaders.errors import UserError
from mmtm.science.fusion import REBALANCE_M0, REGULAR
from mmtm.science.network import TwoViewMMTMNet, two_head_loss
from mmtm.science.speed import GROUPS, READOUT, SpeedMeter


def direct_mu(params):
    grad = sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)
    return grad / sum(float(p.detach().double().square().sum()) for p in params)


def d_of(M):
    """d_speed of group sums {group: value}, straight from docs/science.md §3."""
    return math.log10(M["fusion0"] / M["theta0"]) - math.log10(M["fusion1"] / M["theta1"])


def test_two_step_toy_run_matches_direct_computation():
    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    groups = net.param_groups()
    meter = SpeedMeter(groups)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert all(math.isnan(v) for v in meter.values().values())  # before the first regular step
    M = dict.fromkeys(GROUPS, 0.0)
    for mode in (REGULAR, REGULAR, REBALANCE_M0):
        opt.zero_grad(set_to_none=True)
        x0, x1, y = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
        two_head_loss(*net(x0, x1, mode), y).backward()
        mu = meter.measure()
        expected = {g: direct_mu(groups[g]) for g in GROUPS}
        assert dict(zip(GROUPS, mu.tolist())) == pytest.approx(expected, rel=1e-5)
        if mode == REGULAR:  # the training loop measures and counts regular steps only
            meter.update(mu)
            M = {g: M[g] + expected[g] for g in GROUPS}
        opt.step()
    assert meter.regular_steps == 2
    assert dict(zip(GROUPS, meter.M.tolist())) == pytest.approx(M, rel=1e-5)
    values = meter.values()
    s_m1_m0 = math.log10(M["fusion0"] / M["theta0"])
    s_m0_m1 = math.log10(M["fusion1"] / M["theta1"])
    assert values["s_m1_m0"] == pytest.approx(s_m1_m0, abs=1e-5)
    assert values["s_m0_m1"] == pytest.approx(s_m0_m1, abs=1e-5)
    assert values["d_speed"] == pytest.approx(s_m1_m0 - s_m0_m1, abs=1e-5)
    assert values["d_speed_signal"] == values["d_speed"]  # the default signal is the paper's cumulative view


def test_missing_grads_count_as_zero():
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    q.grad = torch.full((3,), 2.0)
    meter = SpeedMeter({"theta0": [p], "theta1": [q], "fusion0": [p, q], "fusion1": [q]})
    assert meter.measure().tolist() == pytest.approx([0.0, 4.0, 12 / 5, 4.0])


def scripted(i):
    """A made-up μ per group for step i (no network needed)."""
    return {"theta0": 1.0 + i, "theta1": 2.0 + 0.5 * i, "fusion0": 0.1 * (i + 1) ** 1.5, "fusion1": 0.3 + 0.02 * i}


def feed(meter, mus):
    for mu in mus:
        meter.update(torch.tensor([mu[g] for g in GROUPS], dtype=torch.float64))


@pytest.mark.parametrize("window", [1, 3, 10])
def test_three_views_match_a_direct_computation_on_scripted_steps(window):
    mus = [scripted(i) for i in range(7)]
    meter = SpeedMeter(dict.fromkeys(GROUPS, []), window=window)
    for k in range(1, len(mus) + 1):
        feed(meter, mus[k - 1:k])
        values = meter.values()
        cumulative = {g: math.fsum(m[g] for m in mus[:k]) for g in GROUPS}
        last_k = {g: math.fsum(m[g] for m in mus[max(0, k - window):k]) for g in GROUPS}
        assert values["d_speed"] == pytest.approx(d_of(cumulative), abs=1e-12)
        assert values["d_speed_step"] == pytest.approx(d_of(mus[k - 1]), abs=1e-12)
        assert values["d_speed_window"] == pytest.approx(d_of(last_k), abs=1e-12)


def test_window_signal_and_cumulative_signal_from_an_epoch():
    mus = [scripted(i) for i in range(6)]
    window = SpeedMeter(dict.fromkeys(GROUPS, []), window=2, signal="window")
    late = SpeedMeter(dict.fromkeys(GROUPS, []), signal_from_epoch=1)
    for epoch, chunk in ((0, mus[:3]), (1, mus[3:])):
        for meter in (window, late):
            meter.start_epoch(epoch)
            feed(meter, chunk)
    assert window.values()["d_speed_signal"] == pytest.approx(d_of({g: mus[4][g] + mus[5][g] for g in GROUPS}))
    assert late.values()["d_speed_signal"] == pytest.approx(d_of({g: math.fsum(m[g] for m in mus[3:]) for g in GROUPS}))
    assert late.values()["d_speed"] == pytest.approx(d_of({g: math.fsum(m[g] for m in mus) for g in GROUPS}))
    fresh = SpeedMeter(dict.fromkeys(GROUPS, []), signal_from_epoch=1)
    fresh.start_epoch(0)
    feed(fresh, mus[:3])
    assert math.isnan(fresh.values()["d_speed_signal"]) and not math.isnan(fresh.values()["d_speed"])


@pytest.mark.parametrize("settings", [{}, {"window": 3, "signal": "window"}, {"signal_from_epoch": 1}])
def test_state_round_trip_continues_exactly(settings, roundtrip):
    a = SpeedMeter(dict.fromkeys(GROUPS, []), **settings)
    a.start_epoch(1)
    feed(a, [scripted(i * 0.37) for i in range(5)])
    b = SpeedMeter(dict.fromkeys(GROUPS, []), **settings)
    b.load_state_dict(roundtrip(a.state_dict()))
    for i in range(6, 9):
        feed(a, [scripted(i * 0.37)])
        feed(b, [scripted(i * 0.37)])
        assert a.values() == b.values() and a.regular_steps == b.regular_steps
    with pytest.raises(UserError, match="resume with the run's settings"):
        SpeedMeter(dict.fromkeys(GROUPS, []), window=7).load_state_dict(a.state_dict())


def test_readout_order_and_bad_settings():
    assert READOUT == ("d_speed", "s_m1_m0", "s_m0_m1", "d_speed_step", "d_speed_window", "d_speed_signal")
    with pytest.raises(ValueError, match="fusion1"):
        SpeedMeter({"theta0": [], "theta1": [], "fusion0": []})
    for bad in ({"window": 0}, {"signal": "median"}, {"signal_from_epoch": -1}):
        with pytest.raises(ValueError):
            SpeedMeter(dict.fromkeys(GROUPS, []), **bad)
