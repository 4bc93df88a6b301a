import torch
import torchvision

from mmtm.science.fusion import MMTM
from mmtm.science.network import ResNet18, SingleViewNet, TwoViewMMTMNet, fused_logits, two_head_loss


def numel(module):
    return sum(p.numel() for p in module.parameters())


def test_width_64_branch_is_torchvision_resnet18():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10)
    torch.manual_seed(0)
    ours = ResNet18(10, width=64)
    assert repr(ours).split("\n")[1:] == repr(tv).split("\n")[1:]  # same modules; only the class name differs
    assert list(ours.state_dict()) == list(tv.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), tv.state_dict().values()))


def test_width_64_parameter_count():
    with torch.device("meta"):
        net = TwoViewMMTMNet(num_classes=40)
        resnet = torchvision.models.resnet18(num_classes=40)
    # MMTM(C, C): C_Z = int(2*2C/4) = C; squeeze 2C→C, excite_a and excite_b C→C, all with bias
    mmtm = sum((2 * c * c + c) + 2 * (c * c + c) for c in (128, 256, 512))
    assert numel(net) == 2 * numel(resnet) + mmtm
    assert [m.squeeze.in_features for m in net.mmtms] == [256, 512, 1024]


def test_scaled_width_structure():
    net = TwoViewMMTMNet(num_classes=7, width=4)
    for branch in (net.branch0, net.branch1):
        assert [layer[0].conv1.out_channels for layer in (branch.layer1, branch.layer2, branch.layer3, branch.layer4)] \
            == [4, 8, 16, 32]
        assert (branch.fc.in_features, branch.fc.out_features) == (32, 7)
    assert [(m.excite_a.out_features, m.excite_b.out_features) for m in net.mmtms] == [(8, 8), (16, 16), (32, 32)]


def test_forward_shapes():
    net = TwoViewMMTMNet(num_classes=7, width=4)
    l0, l1 = net(torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32))
    assert l0.shape == l1.shape == (3, 7)


def test_param_groups_cover_every_parameter_in_the_right_groups():
    net = TwoViewMMTMNet(num_classes=5, width=4)
    groups = {name: {id(p) for p in params} for name, params in net.param_groups().items()}
    assert all(len(groups[name]) == len(net.param_groups()[name]) for name in groups)  # no duplicates
    def ids(module):
        return {id(p) for p in module.parameters()}

    theta0, theta1 = ids(net.branch0), ids(net.branch1)
    excite_a = set().union(*(ids(m.excite_a) for m in net.mmtms))
    excite_b = set().union(*(ids(m.excite_b) for m in net.mmtms))
    squeeze = set().union(*(ids(m.squeeze) for m in net.mmtms))
    assert groups["theta0"] == theta0 and groups["theta1"] == theta1 and not theta0 & theta1
    assert groups["fusion0"] == excite_a | squeeze
    assert groups["fusion1"] == excite_b | squeeze
    assert not excite_a & groups["fusion1"] and not excite_b & groups["fusion0"]
    assert not (theta0 | theta1) & (groups["fusion0"] | groups["fusion1"])
    assert set().union(*groups.values()) == ids(net)  # nothing unassigned
    assert [id(p) for p in net.branch_params(1)] == [id(p) for p in net.param_groups()["theta1"]]


def test_loss_is_sum_of_two_cross_entropies_and_prediction_is_mean():
    l0, l1 = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 5, 2, 2])
    def ce(logits):
        return -logits.log_softmax(1)[torch.arange(4), y].mean()

    torch.testing.assert_close(two_head_loss(l0, l1, y), ce(l0) + ce(l1))
    torch.testing.assert_close(fused_logits(l0, l1), (l0 + l1) / 2)


def test_channels_last_under_bf16_autocast():
    net = TwoViewMMTMNet(num_classes=5, width=4).to(memory_format=torch.channels_last).train()
    x0 = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    x1 = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l0, l1 = net(x0, x1)
        loss = two_head_loss(l0, l1, torch.tensor([1, 3]))
    loss.backward()
    assert torch.isfinite(loss) and l0.shape == (2, 5)
    assert all(torch.isfinite(m.running_gate_a).all() and m.running_gate_a.dtype == torch.float32 for m in net.mmtms)
    assert all(p.grad is not None for p in net.parameters())


def test_mmtms_are_the_three_fusion_modules():
    net = TwoViewMMTMNet(num_classes=5, width=4, ratio=2, gate="2sigmoid")
    assert len(net.mmtms) == 3 and all(isinstance(m, MMTM) and m.gate == "2sigmoid" for m in net.mmtms)
    assert net.mmtms[0].squeeze.out_features == int(2 * 16 / 2)


def test_the_single_view_baseline_is_one_branch_that_sees_only_its_view():
    torch.manual_seed(0)
    net = SingleViewNet(num_classes=5, width=4, slot=1).eval()
    assert numel(net) == numel(ResNet18(5, width=4)) and not list(net.mmtms.parameters())
    x0, x1 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    y0, y1 = net(x0, x1)
    assert y0 is y1                                              # its one head stands in for both
    torch.testing.assert_close(net(torch.randn(2, 3, 32, 32), x1)[0], y0)   # the other view is never read
    assert not torch.allclose(net(x0, torch.randn(2, 3, 32, 32))[0], y0)
