import math

import pytest
import torch

from mmtm.science.fusion import FLOW_OFF, MODES, REGULAR, REBALANCE_M0, REBALANCE_M1, MMTM
from mmtm.science.network import TwoViewMMTMNet

# MMTM(2, 2): C_Z = int(2*(2+2)/4) = 2. Weights chosen so that the ReLU clips one unit.
W_S, B_S = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -2.0]], [0.5, 1.0]
W_A, B_A = [[1.0, 0.5], [-2.0, 0.0]], [0.0, 1.0]
W_B, B_B = [[0.0, 1.0], [2.0, 0.0]], [0.5, -1.0]
# one sample, 2 channels, 1x2 spatial: S_A = [2, -1], S_B = [2, 2]
A = torch.tensor([[[[1.0, 3.0]], [[0.0, -2.0]]]])
B = torch.tensor([[[[2.0, 2.0]], [[4.0, 0.0]]]])


def linear(W, b, x):
    return [sum(w * v for w, v in zip(row, x)) + bias for row, bias in zip(W, b)]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def hand_gates(s_a, s_b, scale=1.0):
    z = [max(0.0, v) for v in linear(W_S, B_S, s_a + s_b)]
    return ([scale * sigmoid(e) for e in linear(W_A, B_A, z)], [scale * sigmoid(e) for e in linear(W_B, B_B, z)])


def make_mmtm(gate="sigmoid"):
    m = MMTM(2, 2, ratio=4, gate=gate)
    with torch.no_grad():
        for layer, (W, b) in ((m.squeeze, (W_S, B_S)), (m.excite_a, (W_A, B_A)), (m.excite_b, (W_B, B_B))):
            layer.weight.copy_(torch.tensor(W))
            layer.bias.copy_(torch.tensor(b))
    return m


def gated(x, g):
    return x * torch.tensor(g).view(1, -1, 1, 1)


def test_layer_shapes_follow_the_paper():
    m = MMTM(6, 10, ratio=4)
    assert (m.squeeze.in_features, m.squeeze.out_features) == (16, 8)
    assert (m.excite_a.in_features, m.excite_a.out_features) == (8, 6)
    assert (m.excite_b.in_features, m.excite_b.out_features) == (8, 10)


@pytest.mark.parametrize("gate, scale", [("sigmoid", 1.0), ("2sigmoid", 2.0)])
def test_regular_mode_matches_hand_computation(gate, scale):
    g_a, g_b = hand_gates([2.0, -1.0], [2.0, 2.0], scale)
    assert g_a[0] == pytest.approx(scale * sigmoid(1.5))  # z = [1.5, relu(-1) = 0]
    a_out, b_out = make_mmtm(gate).eval()(A, B)
    torch.testing.assert_close(a_out, gated(A, g_a))
    torch.testing.assert_close(b_out, gated(B, g_b))


def test_flow_off_uses_mean_squeeze_of_the_other_modality():
    m = make_mmtm().eval()
    mean_a, mean_b = [1.0, 1.0], [4.0, 1.0]
    with pytest.raises(RuntimeError, match="collect_mean_squeeze"):
        m(A, B, FLOW_OFF)
    m.set_mean_squeeze(torch.tensor(mean_a), torch.tensor(mean_b))
    a_out, b_out = m(A, B, FLOW_OFF)
    torch.testing.assert_close(a_out, gated(A, hand_gates([2.0, -1.0], mean_b)[0]))
    torch.testing.assert_close(b_out, gated(B, hand_gates(mean_a, [2.0, 2.0])[1]))


@pytest.mark.parametrize("mode", [REBALANCE_M0, REBALANCE_M1])
def test_rebalance_replaces_one_gate_by_its_running_mean(mode):
    m = make_mmtm().train()
    m.running_gate_a.copy_(torch.tensor([0.3, 0.7]))
    m.running_gate_b.copy_(torch.tensor([0.9, 0.1]))
    a_out, b_out = m(A, B, mode)
    g_a, g_b = hand_gates([2.0, -1.0], [2.0, 2.0])
    if mode == REBALANCE_M0:
        g_a = [0.3, 0.7]
    else:
        g_b = [0.9, 0.1]
    torch.testing.assert_close(a_out, gated(A, g_a))
    torch.testing.assert_close(b_out, gated(B, g_b))
    (a_out.sum() + b_out.sum()).backward()
    rebalanced, used = (m.excite_a, m.excite_b) if mode == REBALANCE_M0 else (m.excite_b, m.excite_a)
    assert rebalanced.weight.grad is None  # the constant gate carries no gradient
    assert used.weight.grad is not None and m.squeeze.weight.grad is not None


def test_running_means_track_own_gate_only_in_regular_training_steps():
    torch.manual_seed(0)
    m = MMTM(3, 3)
    batches = [(torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)) for _ in range(3)]
    expected_a, expected_b = [], []
    for a, b in batches:
        m.train()
        m(a, b)
        with torch.no_grad():
            s_a, s_b = a.mean((2, 3)), b.mean((2, 3))
            z = torch.relu(m.squeeze(torch.cat([s_a, s_b], 1)))
            expected_a.append(torch.sigmoid(m.excite_a(z)).mean(0))
            expected_b.append(torch.sigmoid(m.excite_b(z)).mean(0))
        # none of these move the running means
        m(a * 3, b - 1, REBALANCE_M0)
        m(a * 3, b - 1, REBALANCE_M1)
        m.eval()
        m(a + 5, b)
    # cumulative mean = direct mean over the regular steps; m1's mean follows g_B (the official code used g_A)
    torch.testing.assert_close(m.running_gate_a, torch.stack(expected_a).mean(0))
    torch.testing.assert_close(m.running_gate_b, torch.stack(expected_b).mean(0))
    assert not torch.allclose(m.running_gate_a, m.running_gate_b)
    assert int(m.running_steps) == 3
    m.set_mean_squeeze(torch.zeros(3), torch.zeros(3))
    m.train()
    m(*batches[0], FLOW_OFF)
    assert int(m.running_steps) == 3


def test_state_dict_holds_running_means_and_mean_squeeze():
    keys = set(MMTM(2, 2).state_dict())
    assert {"running_gate_a", "running_gate_b", "running_steps",
            "mean_squeeze_a", "mean_squeeze_b", "has_mean_squeeze"} <= keys


def test_unknown_mode_and_gate_are_rejected():
    with pytest.raises(ValueError):
        make_mmtm()(A, B, "off")
    with pytest.raises(ValueError):
        MMTM(2, 2, gate="tanh")


def test_channels_last_and_bf16_features_keep_their_layout_and_dtype():
    m = MMTM(4, 4)
    a = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
    b = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a_out, b_out = m.train()(a, b)
    assert a_out.dtype == torch.bfloat16 and a_out.is_contiguous(memory_format=torch.channels_last)
    assert m.running_gate_a.dtype == torch.float32 and torch.isfinite(m.running_gate_a).all()


def test_flow_off_network_heads_see_only_their_own_view():
    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=5, width=4).eval()
    for m in net.mmtms:
        m.set_mean_squeeze(torch.rand_like(m.mean_squeeze_a), torch.rand_like(m.mean_squeeze_b))
    x0, x1 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    x0_new, x1_new = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        l0, l1 = net(x0, x1, FLOW_OFF)
        l0_b, l1_b = net(x0, x1_new, FLOW_OFF)  # change view 1: head 0 must not move
        l0_c, l1_c = net(x0_new, x1, FLOW_OFF)  # change view 0: head 1 must not move
        n0, _ = net(x0, x1)
        n0_b, _ = net(x0, x1_new)
    torch.testing.assert_close(l0_b, l0, rtol=0, atol=0)
    torch.testing.assert_close(l1_c, l1, rtol=0, atol=0)
    assert not torch.allclose(l1_b, l1) and not torch.allclose(l0_c, l0)
    assert not torch.allclose(n0_b, n0)  # with fusion on, view 1 does reach head 0


def test_modes_constants():
    assert MODES == ("regular", "flow_off", "rebalance_m0", "rebalance_m1") and REGULAR == "regular"
