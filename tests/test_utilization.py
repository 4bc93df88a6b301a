from typing import NamedTuple

import pytest
import torch

from mmtm.science.fusion import FLOW_OFF
from mmtm.science.network import STAGES, TwoViewMMTMNet
from mmtm.science.utilization import collect_mean_squeeze, cur_from_accuracies


class Batch(NamedTuple):
    view0: torch.Tensor
    view1: torch.Tensor


def trained_net():
    """A tiny net whose BN statistics and running gates have moved away from their initial values."""
    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=4, width=4).train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32))
    return net


def stem(branch, x):
    return branch.layer1(branch.maxpool(branch.relu(branch.bn1(branch.conv1(x)))))


def direct_mean_squeeze(net, x0, x1):
    """Mean over all samples of every MMTM's input pools, by hand (eval mode: samples are independent)."""
    means = []
    with torch.no_grad():
        h0, h1 = stem(net.branch0, x0), stem(net.branch1, x1)
        for stage, mmtm in zip(STAGES, net.mmtms):
            h0, h1 = getattr(net.branch0, stage)(h0), getattr(net.branch1, stage)(h1)
            means.append((h0.mean((0, 2, 3)), h1.mean((0, 2, 3))))
            h0, h1 = mmtm(h0, h1)
    return means


def test_mean_squeeze_is_the_sample_mean_over_all_batches():
    net = trained_net()
    x0, x1 = torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32)
    batches = [Batch(x0[:3], x1[:3]), Batch(x0[3:], x1[3:])]  # unequal sizes: weights are per sample
    assert collect_mean_squeeze(net, batches) == 5
    net.eval()
    for mmtm, (mean_a, mean_b) in zip(net.mmtms, direct_mean_squeeze(net, x0, x1)):
        torch.testing.assert_close(mmtm.mean_squeeze_a, mean_a)
        torch.testing.assert_close(mmtm.mean_squeeze_b, mean_b)
        assert bool(mmtm.has_mean_squeeze)
    net(x0, x1, FLOW_OFF)  # now allowed


def test_collect_mean_squeeze_changes_no_other_state():
    net = trained_net()
    net.branch1.bn1.eval()  # a mixed set of flags must come back as it was
    flags = {name: m.training for name, m in net.named_modules()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [Batch(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)) for _ in range(2)]
    collect_mean_squeeze(net, batches, device="cpu")
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("mean_squeeze" in k for k in changed)
    assert {name: m.training for name, m in net.named_modules()} == flags
    assert all(p.grad is None for p in net.parameters())


def test_collect_mean_squeeze_needs_samples():
    with pytest.raises(ValueError):
        collect_mean_squeeze(trained_net(), [])


def test_cur_from_accuracies():
    cur = cur_from_accuracies(acc_m0=0.8, acc_m1=0.5, acc_m0_only=0.6, acc_m1_only=0.6)
    assert cur["u_m1_given_m0"] == pytest.approx(0.25)
    assert cur["u_m0_given_m1"] == pytest.approx(-0.2)  # flow off helped head 1: negative, not clipped
    assert cur["d_util"] == pytest.approx(0.45)
