"""mmtm.methods: the arithmetic of OGM-GE, G-Blending, ModDrop and PMR pinned on tiny hand-made tensors.

Expected values are worked out by hand (math, not the module under test) in each test."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mmtm.methods import g_blending, moddrop, ogm_ge, pmr
from mmtm.science.network import ResNet18, TwoViewMMTMNet

LN3 = math.log(3.0)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------------- OGM-GE
# Two classes, labels [0, 1]. logits0 puts 0.75 on the true class of both samples (score0 = 1.5);
# logits1 is flat (0.5 each, score1 = 1.0). ρ = score0/score1 = 1.5.
Y2 = torch.tensor([0, 1])
SHARP = torch.tensor([[LN3, 0.0], [0.0, LN3]])
FLAT = torch.zeros(2, 2)


def test_ogm_scores_are_summed_true_class_probabilities():
    assert ogm_ge.true_class_scores(SHARP, FLAT, Y2).tolist() == pytest.approx([1.5, 1.0])


def coefficients(logits0, logits1, y, alpha):
    return ogm_ge.coefficients_from_scores(ogm_ge.true_class_scores(logits0, logits1, y), alpha)


def test_ogm_branch0_dominates():
    k = coefficients(SHARP, FLAT, Y2, alpha=0.1)
    assert k.tolist() == pytest.approx([1 - math.tanh(0.1 * 1.5), 1.0])


def test_ogm_branch1_dominates():
    k = coefficients(FLAT, SHARP, Y2, alpha=0.8)
    assert k.tolist() == pytest.approx([1.0, 1 - math.tanh(0.8 * 1.5)])


def test_ogm_equal_scores_modulate_nothing():
    assert coefficients(SHARP, SHARP.clone(), Y2, alpha=0.8).tolist() == [1.0, 1.0]


def test_ogm_window_is_inclusive():
    assert ogm_ge.in_window(0) and ogm_ge.in_window(50) and not ogm_ge.in_window(51)
    assert not ogm_ge.in_window(4, starts=5, ends=9) and ogm_ge.in_window(9, starts=5, ends=9)


@pytest.mark.parametrize("epochs, ogm_end, pmr_end", [(100, 50, 54), (130, 65, 70), (15, 7, 7), (1, 0, 0)])
def test_windows_default_to_the_authors_share_of_the_run(epochs, ogm_end, pmr_end):
    """OGM-GE modulates epochs 0..50 of 100 (51%), PMR 0..70 of 130 (71/130); config.json records the epochs."""
    from mmtm.training.config import resolve, to_dict
    d = to_dict(resolve("paper", epochs=epochs))
    assert (d["ogm_end_epoch"], d["pmr_end_epoch"]) == (ogm_end, pmr_end)
    assert (d["ogm_end_fraction"], d["pmr_end_fraction"]) == (0.51, 71 / 130)


def test_window_end_epochs_and_fractions_resolve_one_way(tmp_path):
    import json
    from mmtm.training.config import from_dict, resolve, to_dict
    from mmtm.training.registry import make_policy
    # A config.json written before fractions existed names its end epochs and keeps meaning them.
    old = {k: v for k, v in to_dict(resolve("demo", policy="pmr")).items() if not k.endswith("_fraction")}
    old |= {"ogm_end_epoch": 50, "pmr_end_epoch": 70}
    (tmp_path / "old.json").write_text(json.dumps(old))
    for cfg in (from_dict(old), resolve("demo", tmp_path / "old.json")):
        assert (cfg.ogm_end_epoch, cfg.ogm_end_fraction) == (50, None)
        assert (cfg.pmr_end_epoch, cfg.pmr_end_fraction) == (70, None)
        assert make_policy(cfg).ends == 70
    # A resolved config.json repeats its run, and re-resolves its fraction for another number of epochs.
    (tmp_path / "new.json").write_text(json.dumps(to_dict(resolve("demo", ogm_end_fraction=0.2))))
    assert resolve("demo", tmp_path / "new.json").ogm_end_epoch == 2    # 0.2 of 15 epochs: 0..2
    assert resolve("demo", tmp_path / "new.json", epochs=30).ogm_end_epoch == 5
    # A flag for one form replaces the other form the file gives.
    cfg = resolve("demo", tmp_path / "new.json", ogm_end_epoch=9)
    assert (cfg.ogm_end_epoch, cfg.ogm_end_fraction) == (9, None)
    cfg = resolve("demo", tmp_path / "old.json", pmr_end_fraction=0.5)
    assert (cfg.pmr_end_epoch, cfg.pmr_end_fraction) == (7, 0.5)


def test_ogm_conv_params_are_the_branch_conv_weights():
    branch = ResNet18(num_classes=3, width=4)
    picked = ogm_ge.conv_params(branch)
    convs = [m.weight for m in branch.modules() if isinstance(m, nn.Conv2d)]
    assert len(picked) == 20  # conv1 + 2 convs in each of 8 BasicBlocks + 3 downsample convs
    assert {id(p) for p in picked} == {id(p) for p in convs}
    assert all(p is not branch.fc.weight for p in picked)


def test_ogm_modulation_is_scaling_plus_noise_of_the_unscaled_std():
    w = nn.Parameter(torch.zeros(2, 1, 2, 2))
    w.grad = torch.arange(8.0).view(2, 1, 2, 2)
    untouched = nn.Parameter(torch.zeros(3, 3, 1, 1))  # no grad: skipped
    ogm_ge.modulate_([w, untouched], torch.tensor(0.25), generator=torch.Generator().manual_seed(5))
    eps = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    std = math.sqrt(sum((v - 3.5) ** 2 for v in range(8)) / 7)  # unbiased std of 0..7
    expected = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]).view(2, 1, 2, 2) + eps * (std + 1e-8)
    torch.testing.assert_close(w.grad, expected)
    assert untouched.grad is None


def test_ogm_noise_has_the_unscaled_gradient_std_and_is_seeded():
    n = 40_000
    grad = torch.linspace(-3.0, 5.0, n).view(100, 400, 1, 1)
    # std of an evenly spaced grid of n points over [a, b], unbiased: (b − a)·sqrt(n(n+1)/12)/(n − 1)
    grad_std = 8.0 * math.sqrt(n * (n + 1) / 12) / (n - 1)

    def run(seed: int) -> torch.Tensor:
        w = nn.Parameter(torch.zeros_like(grad))
        w.grad = grad.clone()
        ogm_ge.modulate_([w], torch.tensor(0.25), generator=torch.Generator().manual_seed(seed))
        return w.grad

    noise = run(0) - 0.25 * grad
    assert noise.std().item() == pytest.approx(grad_std, rel=0.03)  # not 0.25·std (the scaled gradient's)
    assert abs(noise.mean().item()) < 5 * grad_std / math.sqrt(n)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# ---------------------------------------------------------------------------------------------- G-Blending
def test_gblend_weights_from_hand_losses():
    train_before = torch.tensor([2.0, 2.0, 2.0])
    val_before = torch.tensor([2.2, 2.1, 2.3])
    train_after = torch.tensor([1.0, 1.5, 0.8])
    val_after = torch.tensor([1.6, 1.8, 2.5])
    # head0: ΔG = 0.6, O 0.2 → 0.6, ΔO = 0.4, 0.6/0.16 = 3.75
    # head1: ΔG = 0.3, O 0.1 → 0.3, ΔO = 0.2, 0.3/0.04 = 7.5
    # fused: ΔG = −0.2 ≤ 0 → weight 0 (the documented rule)
    w = g_blending.blend_weights(train_before, val_before, train_after, val_after)
    assert w.tolist() == pytest.approx([3.75 / 11.25, 7.5 / 11.25, 0.0])
    assert w.sum().item() == pytest.approx(1.0)


def test_gblend_no_head_generalises_gives_uniform_weights():
    w = g_blending.blend_weights(torch.ones(3), torch.ones(3), torch.zeros(3), torch.tensor([1.0, 1.2, 1.5]))
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_gblend_zero_overfitting_change_stays_finite():
    # head0: ΔG = 0.5, ΔO = 0 → 0.5/1e-12 dominates; head1: ΔG = 0.1, ΔO = 0.1 → 10; fused: ΔG = 0
    w = g_blending.blend_weights(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.5, 1.2, 1.3]),
                                 torch.tensor([0.5, 0.8, 1.0]), torch.tensor([1.0, 1.1, 1.3]))
    assert torch.isfinite(w).all()
    assert w.tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)


def test_gblend_blended_loss_is_the_hand_weighted_sum():
    y = torch.tensor([0])
    logits0 = torch.tensor([[LN3, 0.0]])  # p(y) = 0.75
    logits1 = torch.tensor([[0.0, LN3]])  # p(y) = 0.25
    # fused = [ln3/2, ln3/2]: p(y) = 0.5
    expected = 0.2 * -math.log(0.75) + 0.3 * math.log(4.0) + 0.5 * math.log(2.0)
    assert g_blending.head_losses(logits0, logits1, y).tolist() == pytest.approx(
        [-math.log(0.75), math.log(4.0), math.log(2.0)])
    loss = g_blending.blended_loss(logits0, logits1, y, torch.tensor([0.2, 0.3, 0.5]))
    assert loss.item() == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------- ModDrop
def test_moddrop_rate_and_never_both_views():
    n, p = 200_000, 0.3
    mask = moddrop.drop_mask(n, p, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (n, 2) and mask.dtype == torch.bool
    assert not (mask[:, 0] & mask[:, 1]).any()
    sd = math.sqrt(p * (1 - p) / n)
    assert mask.any(1).float().mean().item() == pytest.approx(p, abs=5 * sd)
    for i in (0, 1):  # each view p/2
        assert mask[:, i].float().mean().item() == pytest.approx(p / 2, abs=5 * math.sqrt(p / 2 / n))


def test_moddrop_extreme_probabilities():
    assert not moddrop.drop_mask(1000, 0.0).any()
    assert moddrop.drop_mask(1000, 1.0).sum(1).eq(1).all()
    with pytest.raises(ValueError):
        moddrop.drop_mask(4, 1.5)


def test_moddrop_is_deterministic_given_a_seed():
    a = moddrop.drop_mask(64, 0.5, generator=torch.Generator().manual_seed(7))
    b = moddrop.drop_mask(64, 0.5, generator=torch.Generator().manual_seed(7))
    c = moddrop.drop_mask(64, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_moddrop_zeroes_exactly_the_dropped_views_and_leaves_inputs_alone():
    view0 = torch.randn(3, 3, 4, 4) + 5
    view1 = torch.randn(3, 3, 4, 4) - 5
    before0, before1 = view0.clone(), view1.clone()
    mask = torch.tensor([[True, False], [False, False], [False, True]])
    out0, out1 = moddrop.apply(view0, view1, mask)
    assert torch.equal(view0, before0) and torch.equal(view1, before1)
    assert torch.equal(out0[0], torch.zeros(3, 4, 4)) and torch.equal(out1[2], torch.zeros(3, 4, 4))
    assert torch.equal(out0[1:], before0[1:]) and torch.equal(out1[:2], before1[:2])
    assert out0.data_ptr() != view0.data_ptr() and out1.data_ptr() != view1.data_ptr()


# ----------------------------------------------------------------------------------------------------- PMR
def test_pmr_prototypes_are_class_means():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 0])
    protos = pmr.prototypes(f, y, num_classes=3)
    assert protos[0].tolist() == pytest.approx([3.0, 11 / 3])
    assert protos[1].tolist() == [10.0, 0.0]
    assert protos[2].isnan().all()  # class 2 absent and no previous prototype


def test_pmr_prototypes_momentum_and_absent_class_keeps_previous():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 0])
    previous = torch.tensor([[0.0, 0.0], [2.0, 2.0], [7.0, 7.0]])
    protos = pmr.prototypes(f, y, 3, previous=previous, momentum=0.25)
    # 0.75·new + 0.25·old: class0 0.75·(3, 11/3) = (2.25, 2.75); class1 0.75·(10, 0) + 0.25·(2, 2) = (8, 0.5)
    assert protos.tolist() == [pytest.approx([2.25, 2.75]), pytest.approx([8.0, 0.5]), [7.0, 7.0]]
    nan_previous = torch.tensor([[float("nan")] * 2, [2.0, 2.0], [7.0, 7.0]])
    assert pmr.prototypes(f, y, 3, previous=nan_previous, momentum=0.25)[0].tolist() == pytest.approx([3.0, 11 / 3])


def test_pmr_prototype_logits_are_minus_euclidean_distances():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    protos = torch.tensor([[0.0, 0.0], [3.0, 0.0], [float("nan"), float("nan")]])
    logits = pmr.prototype_logits(f, protos)
    assert logits[:, :2].tolist() == [pytest.approx([0.0, -3.0], abs=1e-5), pytest.approx([-5.0, -4.0])]
    assert logits[:, 2].eq(float("-inf")).all()  # no prototype: out of the softmax
    logits[:, :2].sum().backward()  # distance 0 and a NaN prototype must not poison the gradient
    assert torch.isfinite(f.grad).all()


def test_pmr_coefficients_go_to_the_slow_modality():
    y = torch.tensor([0])
    sharp, flat = torch.tensor([[LN3, 0.0]]), torch.zeros(1, 2)  # p(y) 0.75 vs 0.5: ρ = 1.5
    assert pmr.rebalance_coefficients(sharp, flat, y, alpha=2.0).tolist() == [0.0, 2.0]  # m0 dominant
    assert pmr.rebalance_coefficients(flat, sharp, y, alpha=2.0).tolist() == [2.0, 0.0]  # m1 dominant
    assert pmr.rebalance_coefficients(sharp, sharp.clone(), y, alpha=2.0).tolist() == [0.0, 0.0]


def _tiny_case():
    # one feature dimension, two classes; protos0 = {0, 2}, protos1 = {0, 4}
    protos0, protos1 = torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    y = torch.tensor([0, 1])
    f0 = torch.tensor([[0.5], [3.0]])  # distances (0.5, 1.5), (3, 1): p(y) = σ(1), σ(2)
    f1 = torch.tensor([[1.0], [5.0]])  # distances (1, 3), (5, 1):     p(y) = σ(2), σ(4)
    return f0, f1, y, protos0, protos1


def test_pmr_loss_tiny_case():
    f0, f1, y, protos0, protos1 = _tiny_case()
    # score0 = σ(1) + σ(2) < score1 = σ(2) + σ(4): m1 dominates, the PCE of m0 gets α
    pce0 = (-math.log(sigmoid(1)) - math.log(sigmoid(2))) / 2
    assert pmr.pmr_loss(f0, f1, y, protos0, protos1, alpha=1.5).item() == pytest.approx(1.5 * pce0)


def test_pmr_loss_skips_samples_without_a_prototype():
    f0, f1, y, protos0, protos1 = _tiny_case()
    nan_row = torch.full((1, 1), float("nan"))
    protos0, protos1 = torch.cat([protos0, nan_row]), torch.cat([protos1, nan_row])  # class 2: no prototype
    f0 = torch.cat([f0, torch.tensor([[9.0]])]).requires_grad_()
    f1 = torch.cat([f1, torch.tensor([[9.0]])]).requires_grad_()
    y = torch.tensor([0, 1, 2])
    pce0 = (-math.log(sigmoid(1)) - math.log(sigmoid(2))) / 2  # the class-2 sample is left out
    logits0, logits1 = pmr.prototype_logits(f0, protos0), pmr.prototype_logits(f1, protos1)
    assert pmr.prototypical_ce(logits0, y).item() == pytest.approx(pce0)
    assert pmr.prototype_scores(logits0, logits1, y).tolist() == pytest.approx(
        [sigmoid(1) + sigmoid(2), sigmoid(2) + sigmoid(4)])
    # the class-2 sample changes nothing: the same loss as the two-sample case
    expected = pmr.pmr_loss(*_tiny_case(), alpha=1.5).item()
    loss = pmr.pmr_loss(f0, f1, y, protos0, protos1, alpha=1.5)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.isfinite(f0.grad).all() and torch.isfinite(f1.grad).all()
    assert f0.grad[2].item() == 0.0


def test_pmr_branch_features_are_the_fc_inputs():
    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    x0, x1 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with pmr.branch_features(net) as feats:
        logits0, logits1 = net(x0, x1)
    assert feats[0].shape == (2, 32) and feats[1].shape == (2, 32) and feats[0].requires_grad
    assert torch.allclose(net.branch0.fc(feats[0]), logits0) and torch.allclose(net.branch1.fc(feats[1]), logits1)
    assert not net.branch0.fc._forward_pre_hooks and not net.branch1.fc._forward_pre_hooks


# ---------------------------------------------------------------------------------------------- protocols
def test_the_fused_task_loss_is_the_cross_entropy_of_the_mean_logits():
    from mmtm.science.network import task_loss

    l0, l1, y = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    # ŷ = [[1, 0], [1, 0]]: CE = (−log(e/(e+1)) − log(1/(e+1)))/2
    e = math.e
    assert task_loss("fused", l0, l1, y).item() == pytest.approx((-math.log(e / (e + 1)) - math.log(1 / (e + 1))) / 2)
    e2 = math.e ** 2  # each head alone: logits 2 vs 0, or a tie
    assert task_loss("heads", l0, l1, y).item() == pytest.approx(
        (-math.log(e2 / (e2 + 1)) + math.log(2)) / 2 + (math.log(2) - math.log(1 / (e2 + 1))) / 2)


def test_each_policy_defaults_to_its_authors_task_loss_and_the_flag_overrides_it():
    from mmtm.training.config import resolve

    losses = {p: resolve("demo", policy=p).loss for p in ("vanilla", "balanced", "ogm-ge", "pmr", "g-blending",
                                                          "moddrop")}
    assert losses == {"vanilla": "heads", "balanced": "heads", "ogm-ge": "fused", "pmr": "fused",
                      "g-blending": "fused", "moddrop": "heads"}
    assert resolve("demo", policy="ogm-ge", loss="heads").loss == "heads"
    # G-Blending's retrospective estimator trains the run's loss until its first weights: recorded as given.
    assert resolve("demo", policy="g-blending", gb_estimator="retrospective", loss="heads").loss == "heads"


def test_ogm_scores_come_from_each_branch_share_of_the_fused_logits():
    """ŷ = ŷ0/2 + ŷ1/2: the policy scores softmax(ŷi/2), as the official code scores its fusion layer's halves."""
    net = TwoViewMMTMNet(num_classes=2, width=4)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    policy = ogm_ge.OGMGEPolicy(alpha=1.0)
    two = 2 * LN3  # halved: softmax(ŷ0/2) puts 0.75 on the true class, as SHARP does
    policy.after_backward(net, torch.tensor([[two, 0.0], [0.0, two]]), FLAT, Y2, epoch=0)
    k0 = 1 - math.tanh(1.5)  # ρ = 1.5 from the halved logits (unhalved it would be 0.9/0.5 = 1.8)
    conv = ogm_ge.conv_params(net.branch0)[0]
    assert conv.grad.mean().item() == pytest.approx(k0, abs=0.05)  # k0 + zero-mean noise of std ~0 (grads equal)


def test_gblend_published_estimate_trains_copies_and_leaves_the_network_alone(synthetic_data):
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.config import resolve
    from mmtm.training.hardware import Compute, Distributed
    from mmtm.training.policy import EpochContext
    from mmtm.training.loop import build_trainer

    cfg = resolve("demo", width=4, batch_size=4, policy="g-blending", gb_interval=2, epochs=3, lr=0.05,
                  max_steps_per_epoch=3)
    t = build_trainer(cfg, 3, torch.device("cpu"), Distributed())
    loaders = {}

    def loader(split, train):
        return loaders.setdefault((split, train), two_view_loader(synthetic_data, split, batch_size=4, train=train,
                                                                  seed=0, backend="torch", device="cpu",
                                                                  num_threads=1))

    before = {k: v.clone() for k, v in t.net.state_dict().items()}
    t.policy.start_epoch(0, EpochContext(t.net, Compute(torch.device("cpu")), Distributed(), loader))
    assert all(torch.equal(before[k], v) for k, v in t.net.state_dict().items())  # the copies were discarded
    measured = t.policy.measured  # [before/after, L^T/L^V, head]
    assert measured.shape == (2, 2, 3) and not torch.equal(measured[0], measured[1])  # the copies trained
    expected = g_blending.blend_weights(measured[0, 0], measured[0, 1], measured[1, 0], measured[1, 1])
    assert torch.equal(t.policy.weights, expected) and t.policy.weights.sum().item() == pytest.approx(1.0)
    # at the warm start every copy is the network itself: the both-view copy's L^V is the network's CE(ŷ) on val
    from mmtm.analysis.evaluate import evaluate
    assert measured[0, 1, 2].item() == pytest.approx(evaluate(t.net, loader("val", False), Compute(
        torch.device("cpu")))["loss_fused"])
    t.policy.start_epoch(1, None)  # inside the super-epoch: nothing to estimate (it would need the context)


def test_gblend_copies_see_one_view_only():
    from mmtm.loaders.two_view import Batch

    ones = torch.ones(2, 3, 4, 4)
    batches = [Batch(ones, ones, torch.tensor([0, 1]), torch.tensor([0, 1]))]
    (zeroed1,) = g_blending.without_view(batches, 1)
    assert torch.equal(zeroed1.view0, ones) and not zeroed1.view1.any()
    (zeroed0,) = g_blending.without_view(batches, 0)
    assert not zeroed0.view0.any() and zeroed0.view1.all()
    assert list(g_blending.without_view(batches, None)) == batches


def test_pmr_blends_prototypes_from_epoch_2_as_the_official_code(synthetic_data):
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.hardware import Compute, Distributed
    from mmtm.training.policy import EpochContext

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    train = two_view_loader(synthetic_data, "train", batch_size=4, train=True, seed=0, backend="torch", device="cpu",
                            num_threads=1)
    context = EpochContext(net, Compute(torch.device("cpu")), Distributed(), lambda split, shuffle: train)
    blended, fresh = pmr.PMRPolicy(momentum=0.5), pmr.PMRPolicy(momentum=0.0)
    history = []
    for epoch in range(3):
        with torch.no_grad():  # the network changes between epochs, so fresh prototypes differ
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        previous = blended.protos
        for policy in (blended, fresh):
            policy.start_epoch(epoch, context)
        history.append((previous, [p.clone() for p in blended.protos], [p.clone() for p in fresh.protos]))
    for epoch, (previous, got, new) in enumerate(history):
        for m in (0, 1):
            want = new[m] if epoch < 2 else 0.5 * new[m] + 0.5 * previous[m]
            assert torch.allclose(got[m], want), (epoch, m)


# ---------------------------------------------------------------------------------------------------- MMPareto
def _official_min_norm_2(vecs):
    """GeWu-Lab/MMPareto_ICML2024@a339db3 code/min_norm_solvers.py:9-58, 92-129 (find_min_norm_element, n = 2)."""
    def from2(v1v1, v1v2, v2v2):
        if v1v2 >= v1v1:
            return 0.999, v1v1
        if v1v2 >= v2v2:
            return 0.001, v2v2
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        return gamma, v2v2 + gamma * (v1v2 - v2v2)
    dps = {}
    for i, j in ((0, 1), (0, 0), (1, 1)):
        dps[(i, j)] = 0.0
        for k in range(len(vecs[i])):
            dps[(i, j)] += torch.mul(vecs[i][k], vecs[j][k]).sum().data.cpu()
    c, _ = from2(dps[(0, 0)].numpy(), dps[(0, 1)].numpy(), dps[(1, 1)].numpy())
    return [c, 1 - c]


def _official_encoder_grads(total: dict, both: dict, uni: dict, *, balance_benchmark: bool = False) -> dict:
    """MMPareto.py:126-207 for one encoder: its cosine test, weights and per-tensor rescale, on gradients given as
    {name: tensor} (with the code's "concat" entry). balance_benchmark: GeWu-Lab/BalanceBenchmark@4c1482f
    balancemm/trainer/MMPareto_trainer.py:376-399, whose conflicting branch assigns the solver's result to the loop
    variable and leaves the weights at [0, 0]."""
    import torch.nn.functional as F
    both = {**both, "concat": torch.cat([t.flatten() for t in both.values()])}
    uni = {**uni, "concat": torch.cat([t.flatten() for t in uni.values()])}
    k = [0, 0]
    if F.cosine_similarity(both["concat"], uni["concat"], dim=0) > 0:
        k = [0.5, 0.5]
    elif not balance_benchmark:
        k = _official_min_norm_2([list(both.values()), list(uni.values())])
    out = {}
    for name, grad in total.items():
        three_norm = torch.norm(grad.clone())
        new_grad = 2 * k[0] * both[name] + 2 * k[1] * uni[name]
        diff = three_norm / torch.norm(new_grad)
        out[name] = diff * new_grad * 1.5 if diff > 1 else new_grad * 1.5
    return out


def _pareto_case(conflict: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    both = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}
    uni = {n: (-1 if conflict else 1) * t + 0.3 * torch.randn(t.shape, generator=g) for n, t in both.items()}
    total = {n: both[n] + uni[n] + 0.1 * torch.randn(t.shape, generator=g) for n, t in both.items()}
    return total, both, uni


@pytest.mark.parametrize("conflict", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmpareto_matches_a_transcription_of_the_official_code(conflict, seed):
    from mmtm.methods import mmpareto
    total, both, uni = _pareto_case(conflict, seed)
    expected = _official_encoder_grads(total, both, uni)
    mine, k = mmpareto.pareto_gradients(list(total.values()), list(both.values()), list(uni.values()))
    assert (k.tolist() == [0.5, 0.5]) != conflict
    for name, got in zip(total, mine):
        assert torch.allclose(got, expected[name].float(), rtol=1e-6, atol=1e-6), name


@pytest.mark.parametrize("both, uni, k_mm", [([0.0, 0.0], [1.0, 0.0], 0.999), ([1.0, 0.0], [0.0, 0.0], 0.001)])
def test_mmpareto_weights_clip_at_the_ends_of_the_segment(both, uni, k_mm):
    """A zero gradient (cosine 0: not agreeing) is the min-norm point: the solver's 0.999/0.001 at the ends."""
    from mmtm.methods import mmpareto
    both, uni = [torch.tensor(both)], [torch.tensor(uni)]
    k = mmpareto.pareto_weights(both, uni)
    assert k.tolist() == pytest.approx([k_mm, 1 - k_mm])
    assert k.tolist() == pytest.approx(_official_min_norm_2([both, uni]))


def test_mmpareto_conflicting_steps_give_finite_gradients_where_balancebenchmark_gives_nan():
    from mmtm.methods import mmpareto
    total, both, uni = _pareto_case(conflict=True)
    ported = _official_encoder_grads(total, both, uni, balance_benchmark=True)
    assert all(t.isnan().all() for t in ported.values())
    mine, _ = mmpareto.pareto_gradients(list(total.values()), list(both.values()), list(uni.values()))
    assert all(t.isfinite().all() for t in mine)
    # A tensor neither loss reaches (combined gradient 0): zero here, 0/0 in the official rescale.
    zero = [torch.zeros(2)]
    new, _ = mmpareto.pareto_gradients([torch.ones(2)], zero, zero)
    assert new[0].tolist() == [0.0, 0.0]


def test_mmpareto_policy_replaces_encoder_gradients_and_leaves_heads_and_mmtms_alone():
    """The policy in a step (loss hook, backward, after_backward) against the official procedure done by hand: one
    backward per loss, gradients cloned, encoders combined, heads and MMTMs with the whole loss's gradient."""
    import torch.nn.functional as F
    from mmtm.methods import mmpareto

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    x0, x1, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    policy = mmpareto.MMParetoPolicy()
    with policy.capture(net) as features:
        logits0, logits1 = net(x0, x1)
    policy.loss(logits0, logits1, y, features, 0).backward()
    policy.after_backward(net, logits0, logits1, y, 0)
    got = {n: p.grad.clone() for n, p in net.named_parameters()}

    net.zero_grad()
    logits0, logits1 = net(x0, x1)
    losses = [F.cross_entropy((logits0 + logits1) / 2, y), F.cross_entropy(logits0, y), F.cross_entropy(logits1, y)]
    per_loss = []
    for loss in losses:
        loss.backward(retain_graph=True)
        per_loss.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                         for n, p in net.named_parameters()})
        net.zero_grad()
    total = {n: sum(g[n] for g in per_loss) for n in per_loss[0]}
    expected = dict(total)
    for i in (0, 1):
        names = [n for n, _ in net.named_parameters() if n.startswith(f"branch{i}.") and ".fc." not in n]
        expected |= _official_encoder_grads({n: total[n] for n in names}, {n: per_loss[0][n] for n in names},
                                            {n: per_loss[1 + i][n] for n in names})
    assert any(n.startswith("mmtms.") for n in got) and any(".fc." in n for n in got)
    for n in got:
        assert torch.allclose(got[n], expected[n], rtol=1e-5, atol=1e-7), n


# ---------------------------------------------------------------------------------------------------- AGM
class _OfficialGradMod(nn.Module):
    """lihong2303/AGM_ICCV2023@5a65542 model/CREMAD_net.py:7-55, 57-72: the response modules and the backward hooks
    of GradMod, on outputs given (total, pad_visual_out, pad_audio_out) instead of the network that makes them."""

    class _Out(nn.Module):
        def forward(self, x):
            return x

    def __init__(self):
        super().__init__()
        self.m_a_o, self.m_v_o = self._Out(), self._Out()
        self.scale_a = self.scale_v = 1.0
        self.m_a_o.register_full_backward_hook(self.hooka)
        self.m_v_o.register_full_backward_hook(self.hookv)

    def hooka(self, m, ginp, gout):
        gnew = ginp[0].clone()
        return gnew * self.scale_a,

    def hookv(self, m, ginp, gout):
        gnew = ginp[0].clone()
        return gnew * self.scale_v,

    def update_scale(self, coeff_a, coeff_v):
        self.scale_a = coeff_a
        self.scale_v = coeff_v

    def forward(self, total_out, pad_visual_out, pad_audio_out):
        m_a = self.m_a_o(0.5 * (total_out - pad_audio_out + pad_visual_out))
        m_v = self.m_v_o(0.5 * (total_out - pad_visual_out + pad_audio_out))
        return m_a + m_v


def _official_agm_step(model, total_out, pad_visual_out, pad_audio_out, label, train_score_a, train_score_v,
                       iteration, alpha, modulate=True):
    """run/CREMAD_main.py:64-69, 127-166 (methods AGM, multimodal): returns (coeff_a, coeff_v, train_score_a,
    train_score_v); the loss's gradient lands on the three outputs."""
    softmax = nn.Softmax(dim=1)
    criterion = nn.CrossEntropyLoss()
    out = model(total_out, pad_visual_out, pad_audio_out)
    out_a = 0.5 * (total_out - pad_audio_out + pad_visual_out)
    out_v = 0.5 * (total_out - pad_visual_out + pad_audio_out)
    loss = criterion(out, label)
    score_audio = 0.
    score_visual = 0.
    for k in range(out_a.size(0)):
        if torch.isinf(torch.log(softmax(out_a)[k][label[k]])) or softmax(out_a)[k][label[k]] < 1e-8:
            score_audio += - torch.log(torch.tensor(1e-8, dtype=out_a.dtype, device=out_a.device))
        else:
            score_audio += - torch.log(softmax(out_a)[k][label[k]])
        if torch.isinf(torch.log(softmax(out_v)[k][label[k]])) or softmax(out_v)[k][label[k]] < 1e-8:
            score_visual += - torch.log(torch.tensor(1e-8, dtype=out_v.dtype, device=out_v.device))
        else:
            score_visual += - torch.log(softmax(out_v)[k][label[k]])
    score_audio = score_audio / out_a.size(0)
    score_visual = score_visual / out_v.size(0)
    ratio_a = math.exp(score_visual.item() - score_audio.item())
    ratio_v = math.exp(score_audio.item() - score_visual.item())
    optimal_ratio_a = math.exp(train_score_v - train_score_a)
    optimal_ratio_v = math.exp(train_score_a - train_score_v)
    coeff_a = math.exp(alpha * (min(optimal_ratio_a - ratio_a, 10)))
    coeff_v = math.exp(alpha * (min(optimal_ratio_v - ratio_v, 10)))
    train_score_a = train_score_a * (iteration - 1) / iteration + score_audio.item() / iteration
    train_score_v = train_score_v * (iteration - 1) / iteration + score_visual.item() / iteration
    if modulate:
        model.update_scale(coeff_a, coeff_v)
    loss.backward()
    return model.scale_a, model.scale_v, train_score_a, train_score_v


def _agm_batches(seed: int, steps: int = 4):
    """Hand-made outputs (total, view 0 zeroed, view 1 zeroed) of 5 samples, 4 classes, per step; one sample's
    true class is pushed below probability 1e-8 in a response (the official floor), and the running scores drift
    far enough apart that the cap at 10 binds in some steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 1, 2, 3, 1])
    batches = []
    for step in range(steps):
        total, zeroed0, zeroed1 = (3 * torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
        if step == 0:  # out0 = (total − zeroed0 + zeroed1)/2 right, out1 = (total − zeroed1 + zeroed0)/2 wrong
            zeroed1 += 12 * torch.nn.functional.one_hot(y, 4)
        if step == 1:
            zeroed0[0, 0] += 60.0  # out0's true class of sample 0 at about e^−30
        batches.append((total, zeroed0, zeroed1))
    return batches, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_agm_matches_a_transcription_of_the_official_code(seed, alpha):
    """Four consecutive steps, window on for three and then off: the coefficients, the running scores and the
    gradients reaching the three outputs agree with the official step; after the window both keep the last k.
    In float64, as the official arithmetic on float64 outputs: its coefficients exponentiate float32 rounding."""
    from mmtm.methods import agm

    batches, y = _agm_batches(seed)
    official = _OfficialGradMod()
    train_a = train_v = 0.
    running, k = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    capped = False
    for it, (total, zeroed0, zeroed1) in enumerate(batches, start=1):
        modulate = it <= 3
        leaves = [t.clone().requires_grad_() for t in (total, zeroed1, zeroed0)]  # official order: pad_visual first
        scale_a, scale_v, train_a, train_v = _official_agm_step(official, *leaves, y, train_a, train_v, it, alpha,
                                                                modulate)
        mine = [t.clone().requires_grad_() for t in (total, zeroed0, zeroed1)]
        out0, out1 = agm.modality_responses(*mine)
        sums = agm.loss_sums(out0, out1, y)
        scores = (sums[:2] / sums[2]).double()
        if modulate:
            capped |= bool(((running.flip(0) - running).exp() - (scores.flip(0) - scores).exp() > 10).any())
            k = agm.coefficients(scores, running, alpha)
        running = agm.update_running(running, scores, it)
        torch.nn.functional.cross_entropy(agm.modulated_output(out0, out1, k), y).backward()
        assert k.tolist() == pytest.approx([scale_a, scale_v], rel=1e-6, abs=1e-6)
        assert running.tolist() == pytest.approx([train_a, train_v], rel=1e-6, abs=1e-6)
        for got, expected in zip(mine, (leaves[0], leaves[2], leaves[1])):
            assert torch.allclose(got.grad, expected.grad, rtol=1e-6, atol=1e-6)
    assert capped


def test_agm_scores_floor_a_vanishing_true_class_probability_at_1e_8():
    from mmtm.methods import agm
    y = torch.tensor([0, 0])
    tiny = torch.tensor([[-50.0, 0.0], [0.0, 0.0]])  # p = e^−50 < 1e-8 counts as 1e-8; the other sample ln 2
    sums = agm.loss_sums(tiny, torch.zeros(2, 2), y)
    assert sums.tolist() == pytest.approx([-math.log(1e-8) + math.log(2), 2 * math.log(2), 2.0])


def test_agm_coefficients_by_hand():
    """k_i = exp(α·min(exp(s̄_j − s̄_i) − exp(s_j − s_i), 10)): the modality doing worse than its running share
    (s_i above s̄_i relative to the other) gets k > 1; the cap binds at 10."""
    from mmtm.methods import agm
    k = agm.coefficients(torch.tensor([1.0, 0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 2.0)
    assert k.tolist() == pytest.approx([math.exp(2 * (1 - math.exp(-0.5))), math.exp(2 * (1 - math.exp(0.5)))])
    capped = agm.coefficients(torch.zeros(2, dtype=torch.float64), torch.tensor([0.0, 3.0], dtype=torch.float64))
    assert capped[0].item() == pytest.approx(math.exp(10)) and capped[1].item() == pytest.approx(
        math.exp(math.exp(-3) - 1))


@pytest.mark.parametrize("head_grad", [0.5, 1.5, -1.5])
def test_agm_clip_matches_the_official_conditional_clip(head_grad):
    """CREMAD_main.py:233-238: the whole model clipped to norm 1 only when the fusion weight's gradient leaves
    [−1, 1]."""
    from mmtm.methods import agm
    g = torch.Generator().manual_seed(3)
    grads = [3 * torch.randn(4, 3, generator=g), 3 * torch.randn(5, generator=g)]
    head = torch.full((2, 2), head_grad)

    def params():
        ps = [nn.Parameter(torch.zeros_like(t)) for t in (*grads, head)]
        for p, t in zip(ps, (*grads, head)):
            p.grad = t.clone()
        return ps

    official, mine = params(), params()
    grad_max, grad_min = torch.max(official[-1].grad), torch.min(official[-1].grad)
    if grad_max > 1 or grad_min < -1:
        nn.utils.clip_grad_norm_(official, max_norm=1.0)
    agm.clip_(mine, [mine[-1].grad])
    for a, b in zip(official, mine):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    assert (abs(head_grad) > 1) == (not torch.equal(mine[0].grad, grads[0]))


def test_agm_policy_step_is_the_official_procedure_on_the_network():
    """The policy in a step (capture, loss, backward, after_backward) against the official procedure by hand on a
    copy of the network: zeroed-view passes in eval mode (BatchNorm statistics and MMTM running gates left alone),
    the hooked sum, CE, the conditional clip. Every gradient agrees."""
    import copy

    from mmtm.methods import agm
    from mmtm.science.network import fused_logits

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    twin = copy.deepcopy(net)
    x0, x1, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    policy = agm.AGMPolicy(alpha=1.0)
    policy.running = torch.tensor([0.9, 1.3], dtype=torch.float64)  # as after some steps
    policy.iteration = 7
    with policy.capture(net) as features:
        logits0, logits1 = net(x0, x1)
    assert not net._forward_hooks and net.training
    policy.loss(logits0, logits1, y, features, 0).backward()
    policy.after_backward(net, logits0, logits1, y, 0)

    model = _OfficialGradMod()
    total = fused_logits(*twin(x0, x1))
    twin.eval()
    pad_visual_out = fused_logits(*twin(x0, torch.zeros_like(x1)))
    pad_audio_out = fused_logits(*twin(torch.zeros_like(x0), x1))
    twin.train()
    _official_agm_step(model, total, pad_visual_out, pad_audio_out, y, 0.9, 1.3, 8, 1.0)
    grad_max = max(torch.max(b.fc.weight.grad) for b in (twin.branch0, twin.branch1))
    grad_min = min(torch.min(b.fc.weight.grad) for b in (twin.branch0, twin.branch1))
    if grad_max > 1 or grad_min < -1:
        nn.utils.clip_grad_norm_(twin.parameters(), max_norm=1.0)
    assert policy.coeff.tolist() == pytest.approx([model.scale_a, model.scale_v], rel=1e-6)
    assert policy.iteration == 8
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    for (name, b), c in zip(net.named_buffers(), twin.buffers()):
        assert torch.equal(b, c), name


def test_agm_keeps_the_last_coefficients_after_its_window():
    from mmtm.methods import agm
    policy = agm.AGMPolicy(alpha=1.0, ends=0)
    y = torch.tensor([0, 1])
    features = {"zeroed0": (torch.zeros(2, 2), torch.zeros(2, 2)),
                "zeroed1": (torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 2))}
    policy.loss(torch.zeros(2, 2), torch.zeros(2, 2), y, features, epoch=0)
    inside = policy.coeff.clone()
    assert not torch.equal(inside, torch.ones(2, dtype=torch.float64))
    running = policy.running.clone()
    features["zeroed0"] = (torch.tensor([[0.0, 3.0], [3.0, 0.0]]), torch.zeros(2, 2))
    policy.loss(torch.zeros(2, 2), torch.zeros(2, 2), y, features, epoch=1)
    assert torch.equal(policy.coeff, inside) and not torch.equal(policy.running, running)


# ---------------------------------------------------------------------------------------------------- OPM
def _official_calcu_q(performance_1, performance_2, q_base, fix_lambda):
    """GeWu-Lab/BML_TPAMI2024@4b3aa4f code/models/Classifier.py:58-72."""
    q = torch.tensor([0.0, 0.0])
    relu = nn.ReLU(inplace=True)
    ratio_1 = torch.tanh(relu(performance_1 / performance_2 - 1))
    ratio_2 = torch.tanh(relu(performance_2 / performance_1 - 1))
    lamda = fix_lambda
    q[0] = q_base * (1 + lamda * ratio_1) if ratio_1 > 0 else 0
    q[1] = q_base * (1 + lamda * ratio_2) if ratio_2 > 0 else 0
    q = torch.clip(q, 0.0, 1.0)
    return q


class _OfficialScale(torch.autograd.Function):
    """Classifier.py:9-21 (custom_autograd)."""

    @staticmethod
    def forward(ctx, input, theta):
        ctx.save_for_backward(input, theta)
        return input / (1 - theta.item())

    @staticmethod
    def backward(ctx, grad_output):
        input, theta = ctx.saved_tensors
        input_grad = 1 / (1 - theta.item()) * grad_output.clone()
        return input_grad, theta


def _official_execute_drop(fead_list, q, dim_list, exe_drop, bernoulli):
    """Classifier.py:31-55 (Modality_drop.execute_drop), the two draws given: `exe_drop` stands for
    `np.random.rand(1) >= 1 - p_exe`, `bernoulli` [B, 1, 2] for `Bernoulli(1 - q).sample([B, 1])`."""
    B = fead_list[0].shape[0]
    D = fead_list[0].shape[1]
    if not exe_drop:
        return fead_list, torch.ones([B], dtype=torch.int32)
    num_mod = len(fead_list)
    d_sum = sum(dim_list)
    q_sum = sum(dim_list * q)
    theta = q_sum / d_sum
    mask = bernoulli.permute(2, 1, 0).contiguous().reshape(num_mod, B, -1)
    concat_list = torch.stack(fead_list, dim=0)
    concat_list = torch.mul(concat_list, mask)
    concat_list = _OfficialScale.apply(concat_list, theta)
    mask = torch.transpose(mask, 0, 1).squeeze(-1)
    update_flag = torch.sum(mask, dim=1) > 0
    cleaned_fea = torch.masked_select(concat_list, update_flag.unsqueeze(-1)).reshape(num_mod, -1, D)
    cleaned_fea = torch.chunk(cleaned_fea, num_mod, dim=0)
    cleaned_fea = [_.squeeze(0) for _ in cleaned_fea]
    return cleaned_fea, update_flag


@pytest.mark.parametrize("scores", [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (1.2, 1.0), (5.0, 0.01), (0.4, 0.9)])
@pytest.mark.parametrize("q_base, lam", [(0.5, 0.5), (0.9, 1.0), (0.2, 0.0)])
def test_opm_drop_probabilities_match_the_official_calcu_q(scores, q_base, lam):
    from mmtm.methods import opm
    expected = _official_calcu_q(torch.tensor(scores[0]), torch.tensor(scores[1]), q_base, lam)
    got = opm.drop_probabilities(torch.tensor(scores), q_base, lam)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert (got > 0).sum() == (scores[0] != scores[1])  # only the dominant view drops


@pytest.mark.parametrize("executed", [True, False])
@pytest.mark.parametrize("q", [(0.6, 0.0), (0.0, 0.75), (0.0, 0.0)])
def test_opm_dropped_features_and_gradients_match_the_official_execute_drop(executed, q):
    from mmtm.methods import opm
    g = torch.Generator().manual_seed(1)
    f0, f1 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    q = torch.tensor(q)
    keep = torch.rand(2, 6, generator=g) < (1 - q)[:, None]
    bernoulli = keep.float().t().reshape(6, 1, 2)  # Bernoulli(1 − q).sample([B, 1]): [B, 1, modality]
    weights = torch.randn(2, 6, 8, generator=g)  # a loss that weighs every element differently

    official = [f0.clone().requires_grad_(), f1.clone().requires_grad_()]
    (o0, o1), update_flag = _official_execute_drop(official, q, torch.tensor([8, 8]), executed, bernoulli)
    assert bool(update_flag.all())  # never more than one view dropped: no sample is removed
    ((o0 * weights[0]).sum() + (o1 * weights[1]).sum()).backward()

    mine = [f0.clone().requires_grad_(), f1.clone().requires_grad_()]
    kept = keep | ~torch.tensor(executed)
    d0, d1 = opm.drop_features(*mine, q, kept, torch.tensor(executed))
    ((d0 * weights[0]).sum() + (d1 * weights[1]).sum()).backward()
    for got, expected in ((d0, o0), (d1, o1), (mine[0].grad, official[0].grad), (mine[1].grad, official[1].grad)):
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_opm_draws_keep_at_1_minus_q_and_drop_in_p_exe_of_the_steps():
    from mmtm.methods import opm
    g = torch.Generator().manual_seed(0)
    q = torch.tensor([0.6, 0.0])
    runs = [opm.draw(q, 50, 0.7, g) for _ in range(400)]
    executed = torch.stack([e for _, e in runs])
    assert executed.float().mean().item() == pytest.approx(0.7, abs=0.05)
    keeps = torch.stack([k for k, e in runs if e])  # [steps, 2, B]
    assert keeps[:, 0].float().mean().item() == pytest.approx(0.4, abs=0.02) and bool(keeps[:, 1].all())
    assert all(bool(k.all()) for k, e in runs if not e)
    again = [opm.draw(q, 50, 0.7, torch.Generator().manual_seed(0)) for _ in range(1)]
    assert torch.equal(again[0][0], runs[0][0])


def test_opm_policy_step_drops_the_dominant_features_as_the_official_forward():
    """The policy's loss against the official forward by hand: scores from each head's share ŷi/2 of the undropped
    features (Classifier.py:112-143), q from calcu_q, the same draws, heads on the dropped features, CE(ŷ)."""
    import torch.nn.functional as F

    from mmtm.methods import opm

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    x0, x1, y = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    policy = opm.OPMPolicy(warmup_epochs=1, p_exe=1.0, seed=5)
    policy.task = "fused"  # make_policy sets the run's loss
    with policy.capture(net) as features:
        logits0, logits1 = net(x0, x1)
    assert not net.branch0.fc._forward_pre_hooks
    warm = policy.loss(logits0, logits1, y, features, epoch=0)
    assert warm.item() == pytest.approx(F.cross_entropy((logits0 + logits1) / 2, y).item())
    loss = policy.loss(logits0, logits1, y, features, epoch=1)
    loss.backward()
    got = {n: p.grad.clone() for n, p in net.named_parameters()}

    net.zero_grad()
    with opm.OPMPolicy().capture(net) as captured:
        net(x0, x1)
    out_1, out_2 = captured[1]
    w0, b0 = net.branch0.fc.weight.detach(), net.branch0.fc.bias.detach()
    w1, b1 = net.branch1.fc.weight.detach(), net.branch1.fc.bias.detach()
    t1, t2 = (out_1 @ w0.t() + b0) / 2, (out_2 @ w1.t() + b1) / 2
    performance_1 = sum([torch.softmax(t1, 1)[i][int(y[i].item())] for i in range(t1.shape[0])])
    performance_2 = sum([torch.softmax(t2, 1)[i][int(y[i].item())] for i in range(t2.shape[0])])
    q = _official_calcu_q(performance_1, performance_2, 0.5, 0.5)
    assert q.tolist() == pytest.approx(policy.last_q.tolist()) and (q > 0).sum() == 1
    generator = torch.Generator().manual_seed(5)
    keep, executed = opm.draw(q, 6, 1.0, generator)
    assert bool(executed) and not bool(keep.all())
    (c0, c1), _ = _official_execute_drop([out_1, out_2], q, torch.tensor([32, 32]), True,
                                         keep.float().t().reshape(6, 1, 2))
    expected = F.cross_entropy((net.branch0.fc(c0) + net.branch1.fc(c1)) / 2, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    expected.backward()
    for n, p in net.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-5, atol=1e-6), n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("executed", [True, False])
def test_opm_matches_a_transcription_of_the_official_forward_and_backward(seed, executed):
    """Hand-made features through the official path (Classifier.py:108-149 with a concatenation layer standing for
    the two heads, main.py:104, 114) and this module's: the loss and the gradients on the features and the weights
    agree, including the official custom_autograd's gradient of θ (θ itself), which reaches the features through
    the scores."""
    import torch.nn.functional as F

    from mmtm.methods import opm
    g = torch.Generator().manual_seed(seed)
    B, D, C = 8, 5, 3
    y = torch.randint(0, C, (B,), generator=g)
    f = [torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)]
    f[seed % 2] = f[seed % 2] * 3  # one view dominant
    w, b = torch.randn(C, 2 * D, generator=g), torch.randn(C, generator=g)
    u = torch.rand(2, B, generator=g)

    out_1, out_2 = (t.clone().requires_grad_() for t in f)
    fxy_w, fxy_b = w.clone().requires_grad_(), b.clone().requires_grad_()
    wd, bd = fxy_w.clone().detach(), fxy_b.clone().detach()
    t1 = torch.mm(out_1, torch.transpose(wd[:, :D], 0, 1)) + bd / 2
    t2 = torch.mm(out_2, torch.transpose(wd[:, D:], 0, 1)) + bd / 2
    performance_1 = sum([torch.softmax(t1, 1)[i][int(y[i].item())] for i in range(t1.shape[0])])
    performance_2 = sum([torch.softmax(t2, 1)[i][int(y[i].item())] for i in range(t2.shape[0])])
    q = _official_calcu_q(performance_1, performance_2, 0.5, 0.5)
    assert q.requires_grad  # the official q carries the scores' graph
    bernoulli = (u < (1 - q.detach())[:, None]).float().t().reshape(B, 1, 2)
    (c0, c1), _ = _official_execute_drop([out_1, out_2], q, torch.tensor([D, D]), executed, bernoulli)
    official = F.cross_entropy(F.linear(torch.cat([c0, c1], dim=1), fxy_w, fxy_b), y)
    official.backward()

    # The heads that make the same ŷ = ŷ0/2 + ŷ1/2 = w[:, :D]·f0 + w[:, D:]·f1 + b: Wi twice the half, bi = b.
    m0, m1 = (t.clone().requires_grad_() for t in f)
    w0, w1 = (2 * w[:, :D]).requires_grad_(), (2 * w[:, D:]).requires_grad_()
    b0, b1 = b.clone().requires_grad_(), b.clone().requires_grad_()
    shares = [F.linear(m, wi.detach(), bi.detach()) / 2 for m, wi, bi in ((m0, w0, b0), (m1, w1, b1))]
    scores = torch.stack([s.softmax(1).gather(1, y[:, None]).sum() for s in shares]).detach()
    q_mine = opm.drop_probabilities(scores)
    keep = (u < (1 - q_mine)[:, None]) | ~torch.tensor(executed)
    extra = opm.theta_term(*shares, y, scores, opm.feature_dims(m0, m1, q_mine), torch.tensor(executed))
    d0, d1 = opm.drop_features(m0, m1, q_mine, keep, torch.tensor(executed))
    mine = F.cross_entropy((F.linear(d0, w0, b0) + F.linear(d1, w1, b1)) / 2, y) + extra
    mine.backward()

    assert extra.item() == 0.0
    assert torch.allclose(q_mine, q.detach(), rtol=1e-6, atol=1e-6)
    assert mine.item() == pytest.approx(official.item(), rel=1e-6, abs=1e-6)
    for got, expected in ((m0.grad, out_1.grad), (m1.grad, out_2.grad), (2 * w0.grad, fxy_w.grad[:, :D]),
                          (2 * w1.grad, fxy_w.grad[:, D:]), (b0.grad + b1.grad, fxy_b.grad)):
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)


def _official_journal_ogm(performance_1, performance_2, alpha, use_ogm_plus):
    """BML@4b3aa4f code/main.py:116-152: the journal code's OGM coefficients."""
    relu = nn.ReLU(inplace=True)
    tanh = nn.Tanh()
    coeff_1, coeff_2 = None, None
    radio_1 = performance_1 / performance_2
    radio_2 = performance_2 / performance_1
    if use_ogm_plus:
        if radio_1 > 1:
            coeff_2 = 4
            coeff_1 = 1
        else:
            coeff_2 = 1
            coeff_1 = 4
    else:
        if radio_1 > 1:
            coeff_1 = 1 - tanh(alpha * relu(radio_1))
            coeff_2 = 1
        else:
            coeff_1 = 1
            coeff_2 = 1 - tanh(alpha * relu(radio_2))
    return coeff_1, coeff_2


@pytest.mark.parametrize("scores", [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (1.2, 1.0), (0.4, 0.9)])
@pytest.mark.parametrize("alpha, plus", [(1.0, False), (0.8, False), (1.0, True)])
def test_opm_ogm_coefficients_match_the_journal_code(scores, alpha, plus):
    from mmtm.methods import opm
    expected = _official_journal_ogm(torch.tensor(scores[0]), torch.tensor(scores[1]), alpha, plus)
    got = opm.ogm_coefficients(torch.tensor(scores), alpha, "plus" if plus else "tanh")
    assert got.tolist() == pytest.approx([float(e) for e in expected], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("mode", ["ogm", "ogm-ge"])
def test_opm_ogm_modulates_conv_gradients_as_the_journal_loop(mode):
    """main.py:154-169 on the network's gradients (its encoder_1/encoder_2 = branch 0/1, 4-D gradients only), the
    noise drawn from the same generator as the policy's: the policy's after_backward gives the same gradients; in
    the warm-up, after the window or with the option off it changes nothing."""
    from mmtm.methods import opm

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    x0, x1, y = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])

    def step(policy, epoch):
        net.zero_grad()
        policy.task = "fused"
        with policy.capture(net) as features:
            logits0, logits1 = net(x0, x1)
        policy.loss(logits0, logits1, y, features, epoch).backward()
        before = {n: p.grad.clone() for n, p in net.named_parameters()}
        policy.after_backward(net, logits0, logits1, y, epoch)
        return before, {n: p.grad.clone() for n, p in net.named_parameters()}, policy

    before, got, policy = step(opm.OPMPolicy(warmup_epochs=1, seed=3, ogm=mode, ogm_alpha=0.8, ogm_ends=2), 2)
    shares = [logits / 2 for logits in net(x0, x1)]  # the same logits again (train mode, batch statistics)
    true_scores = [sum([torch.softmax(t, 1)[i][int(y[i].item())] for i in range(6)]) for t in shares]
    coeff_1, coeff_2 = _official_journal_ogm(*true_scores, 0.8, False)
    generator = torch.Generator().manual_seed(3)
    opm.draw(policy.last_q, 6, opm.DEFAULT_P_EXE, generator)  # the masks' draws come first
    expected = dict(before)
    for name, grad in before.items():
        layer_name = str(name).split('.')[0]
        coeff = coeff_1 if layer_name == "branch0" else coeff_2 if layer_name == "branch1" else None
        if coeff is not None and len(grad.size()) == 4:
            if mode == "ogm-ge":
                expected[name] = grad * coeff + torch.zeros_like(grad).normal_(0, grad.std().item() + 1e-8,
                                                                              generator=generator)
            else:
                expected[name] = grad * coeff
    assert any(not torch.equal(got[n], before[n]) for n in got)
    for n in got:
        assert torch.allclose(got[n], expected[n], rtol=1e-5, atol=1e-6), n
    for policy, epoch in ((opm.OPMPolicy(warmup_epochs=1, ogm=mode), 0), (opm.OPMPolicy(warmup_epochs=0, ogm=mode,
                                                                                        ogm_ends=1), 2),
                          (opm.OPMPolicy(warmup_epochs=0), 1)):
        before, got, _ = step(policy, epoch)
        assert all(torch.equal(got[n], before[n]) for n in got)


@pytest.mark.parametrize("epochs, agm_end, ogm_end", [(100, 19, 80), (15, 2, 11), (1, 0, 0)])
def test_agm_and_opm_resolve_their_authors_loss_and_windows(epochs, agm_end, ogm_end):
    """AGM updates its coefficients in epochs 1..20 of 100 (1-based: 0..19 here), the journal's OGM options modulate
    epochs 0..80 of 100; both train CE of the fused output."""
    from mmtm.training.config import resolve
    agm_cfg, opm_cfg = resolve("demo", policy="agm", epochs=epochs), resolve("demo", policy="opm", epochs=epochs)
    assert (agm_cfg.loss, opm_cfg.loss) == ("fused", "fused")
    assert (agm_cfg.agm_end_epoch, agm_cfg.agm_end_fraction) == (agm_end, 0.2)
    assert (opm_cfg.opm_ogm_end_epoch, opm_cfg.opm_ogm_end_fraction) == (ogm_end, 0.81)


# ------------------------------------------------------------------------------------ Diagnosing & Re-learning
def _official_purity_score(y_true, y_pred):
    """GeWu-Lab/Diagnosing_Relearning_ECCV2024@025085e code/ours.py:63-95, line by line (sklearn's accuracy_score,
    not installed here, is the mean of equal labels)."""
    import numpy as np
    y_voted_labels = np.zeros(y_true.shape)
    labels = np.unique(y_true)
    ordered_labels = np.arange(labels.shape[0])
    for k in range(labels.shape[0]):
        y_true[y_true == labels[k]] = ordered_labels[k]
    labels = np.unique(y_true)
    bins = np.concatenate((labels, [np.max(labels) + 1]), axis=0)
    for cluster in np.unique(y_pred):
        hist, _ = np.histogram(y_true[y_pred == cluster], bins=bins)
        winner = np.argmax(hist)
        y_voted_labels[y_pred == cluster] = winner
    return float(np.mean(y_true == y_voted_labels))


def _official_min_max(x):
    """sklearn MinMaxScaler(feature_range=(-1, 1)).fit_transform (sklearn/preprocessing/_data.py: fit's data_range
    with zeros replaced by 1, scale_ = 2 / range, min_ = -1 - data_min * scale_; transform x * scale_ + min_)."""
    data_min, data_max = x.min(axis=0), x.max(axis=0)
    data_range = data_max - data_min
    data_range[data_range == 0.0] = 1.0
    scale = 2 / data_range
    return x * scale + (-1 - data_min * scale)


def _official_reinit(named_params, checkpoint, weight_audio, weight_visual):
    """ours.py:156-166 on {name: tensor}: 'audio_net' → encoder 0, 'visual_net' → encoder 1, others untouched."""
    out = {}
    for name, param in named_params.items():
        if "audio_net" in name:
            out[name] = weight_audio * checkpoint[name] + (1 - weight_audio) * param
        elif "visual_net" in name:
            out[name] = weight_visual * checkpoint[name] + (1 - weight_visual) * param
        else:
            out[name] = param
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relearn_purity_scaling_weight_and_reinit_match_a_transcription_of_the_official_code(seed):
    from mmtm.methods import relearn
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (40,), generator=g)
    clusters = torch.randint(0, 5, (40,), generator=g)
    assert relearn.purity(labels, clusters) == pytest.approx(
        _official_purity_score(labels.numpy().copy(), clusters.numpy()), abs=1e-12)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    x[:, 2] = 0.7  # a constant feature
    assert torch.allclose(relearn.min_max_scale(x), torch.from_numpy(_official_min_max(x.numpy())), atol=1e-12)
    p = torch.rand(4, generator=g).tolist()
    for lam in (3.0, 0.5):
        w_audio = torch.tanh(torch.tensor(lam * abs(p[0] - p[1])))  # ours.py:122-127
        assert relearn.relearn_weight(p[0], p[1], lam) == pytest.approx(float(w_audio), abs=1e-7)
    params = {"audio_net.conv1.weight": torch.randn(3, 2, generator=g),
              "visual_net.bn1.bias": torch.randn(4, generator=g), "head.weight": torch.randn(2, 2, generator=g)}
    init = {n: torch.randn(t.shape, generator=g) for n, t in params.items()}
    w0, w1 = relearn.relearn_weight(p[0], p[1]), relearn.relearn_weight(p[2], p[3])
    expected = _official_reinit(params, init, torch.tensor(w0), torch.tensor(w1))
    mine = {n: nn.Parameter(t.clone()) for n, t in params.items()}
    relearn.soft_reinit_([mine["audio_net.conv1.weight"]], [init["audio_net.conv1.weight"]], w0)
    relearn.soft_reinit_([mine["visual_net.bn1.bias"]], [init["visual_net.bn1.bias"]], w1)
    for n in params:
        assert torch.allclose(mine[n].detach(), expected[n], atol=1e-6), n


def test_relearn_happens_after_the_official_epochs():
    """ours.py:378-427 with the script's flags (20, 3 of 90): after epochs 20, 40, 60 and no other."""
    from mmtm.methods import relearn
    official, flag_reinit = [], 0
    for epoch in range(90):
        if (epoch % 20 == 0) & (epoch > 0):
            flag_reinit += 1
            if flag_reinit <= 3:
                official.append(epoch)
    assert official == [20, 40, 60]
    assert [e for e in range(90) if relearn.relearns_after(e, 20, 3)] == official
    assert relearn.interval_for(90) == 20 and relearn.interval_for(15) == 3 and relearn.interval_for(1) == 1


def test_relearn_kmeans_finds_separated_clusters_and_their_purity():
    """k-means recovers well-separated blobs (any labelling of them): purity 1; labels mixed within blobs lower it
    to the majority share."""
    from mmtm.methods import relearn
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    blob = torch.arange(4).repeat_interleave(25)
    x = centres[blob] + 0.5 * torch.randn(100, 3, generator=g)
    clusters = relearn.kmeans(relearn.min_max_scale(x), 4)
    assert len(set(zip(blob.tolist(), clusters.tolist()))) == 4  # one cluster per blob
    assert relearn.clustering_purity(x, blob, 4) == 1.0
    mixed = blob.clone()
    mixed[::5] = (mixed[::5] + 1) % 4  # a fifth of each blob labelled as the next
    assert relearn.clustering_purity(x, mixed, 4) == pytest.approx(0.8)


def test_relearn_policy_reinitialises_encoders_only_by_their_purity_gaps(synthetic_data):
    """The policy before the epoch after a re-learning epoch: each encoder (branch without fc) moves to
    w·θ_init + (1−w)·θ with its own w = tanh(3·|P_train − P_val|) from features of the whole splits; heads and MMTMs
    stay; the epoch before does nothing."""
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.hardware import Compute
    from mmtm.training.policy import EpochContext
    from mmtm.methods import relearn

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    compute = Compute.of(torch.device("cpu"), amp="off", channels_last="off")
    loaders = {}

    def loader(split, train):
        if (split, train) not in loaders:
            loaders[split, train] = two_view_loader(str(synthetic_data), split, views=(0, 6), batch_size=4,
                                                    train=train, seed=0, backend="torch", device=compute.device,
                                                    num_threads=0)
        return loaders[split, train]

    context = EpochContext(net, compute, None, loader)
    policy = relearn.ReLearnPolicy(interval=1, count=1)
    policy.start_epoch(0, context)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)  # "training"
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    policy.start_epoch(1, context)  # epoch 0 is no re-learning epoch
    assert policy.weights is None and all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    (train0, train1), train_y = relearn.encoder_features(context, "train", True, 1)
    (val0, val1), val_y = relearn.encoder_features(context, "val", False, 1)
    assert len(train_y) == 31 // 4 * 4 and len(val_y) == 8  # the whole splits (training batches drop the last)
    purities = [relearn.clustering_purity(f, y, 3) for f, y in ((train0, train_y), (val0, val_y), (train1, train_y),
                                                                (val1, val_y))]
    policy.start_epoch(2, context)
    assert policy.purities == purities and 0 < max(policy.weights)
    for n, p in net.named_parameters():
        branch = n.split(".")[0]
        if branch in ("branch0", "branch1") and ".fc." not in f".{n.split('.', 1)[1]}":
            w = policy.weights[int(branch[-1])]
            assert torch.allclose(p, w * (before[n] - 0.1) + (1 - w) * before[n], atol=1e-6), n
        else:
            assert torch.equal(p, before[n]), n
    assert policy.weights == pytest.approx([math.tanh(3 * abs(policy.purities[0] - policy.purities[1])),
                                            math.tanh(3 * abs(policy.purities[2] - policy.purities[3]))])


# ------------------------------------------------------------------------------------------------- UMT, UME
def _official_umt_loss(out, label, student: dict, teacher: dict, scaling):
    """GeWu-Lab/BalanceBenchmark@4c1482f balancemm/trainer/UMT_trainer.py:132-144 (inside the window), on
    {modality: feature}; the teacher outputs as they come out of `torch.no_grad()`."""
    criterion = nn.CrossEntropyLoss()
    MSE = nn.MSELoss()
    loss = criterion(out, label)
    for modality in teacher.keys():
        out_unimodal = teacher[modality]
        loss += scaling * MSE(out_unimodal, student[modality])
    return loss


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scaling", [10.0, 0.3])
def test_umt_loss_matches_a_transcription_of_balancebenchmark(seed, scaling):
    from mmtm.methods import umt
    from mmtm.science.network import fused_logits
    g = torch.Generator().manual_seed(seed)
    logits0, logits1 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    student = [torch.randn(6, 8, generator=g, requires_grad=True) for _ in range(2)]
    teacher = [torch.randn(6, 8, generator=g) for _ in range(2)]
    mine = umt.umt_loss(logits0, logits1, y, student, teacher, scaling)
    expected = _official_umt_loss(fused_logits(logits0, logits1), y, {"audio": student[0], "visual": student[1]},
                                  {"audio": teacher[0], "visual": teacher[1]}, scaling)
    assert torch.allclose(mine, expected, rtol=1e-6, atol=1e-6)
    g_mine = torch.autograd.grad(mine, student)
    g_expected = torch.autograd.grad(expected, student)
    for a, b in zip(g_mine, g_expected):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_umt_policy_distils_each_branch_towards_its_frozen_teachers_head_input():
    """The policy in a step against the formula done by hand: branch m's fc input is pulled towards the fc input of
    the single-view network on view m, run in eval mode on the same views; the teachers get no gradient."""
    import torch.nn.functional as F
    from mmtm.training.hardware import Compute
    from mmtm.methods import umt
    from mmtm.science.network import SingleViewNet

    torch.manual_seed(0)
    net = TwoViewMMTMNet(num_classes=3, width=4)
    teachers = [SingleViewNet(3, width=4, slot=m) for m in (0, 1)]
    for t in teachers:
        t.eval().requires_grad_(False)
    x0, x1, y = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    policy = umt.UMTPolicy([], 10.0)
    policy.teachers, policy.compute, policy.task = teachers, Compute.of(torch.device("cpu"), amp="off"), "fused"
    v0, v1 = policy.inputs(x0, x1, 0)
    with policy.capture(net) as features:
        logits0, logits1 = net(v0, v1)
    loss = policy.loss(logits0, logits1, y, features, 0)

    def head_in(resnet, x):
        h = resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))
        return torch.flatten(resnet.avgpool(resnet.layer4(resnet.layer3(resnet.layer2(h)))), 1)

    captured = {}
    hooks = [b.fc.register_forward_pre_hook(lambda mod, inp, m=m: captured.__setitem__(m, inp[0]))
             for m, b in enumerate((net.branch0, net.branch1))]
    logits0, logits1 = net(x0, x1)
    for h in hooks:
        h.remove()
    teacher = [head_in(teachers[0].branch, x0), head_in(teachers[1].branch, x1)]
    expected = F.cross_entropy((logits0 + logits1) / 2, y) + 10 * sum(
        F.mse_loss(teacher[m], captured[m]) for m in (0, 1))
    assert torch.allclose(loss, expected, rtol=1e-6)
    loss.backward()
    assert all(p.grad is None for t in teachers for p in t.parameters())
    assert not any(t.training for t in teachers)


def test_ume_scores_the_average_of_two_single_view_runs_logits(synthetic_data, tmp_path):
    """UME on two single-view runs: the accuracy of their averaged logits, computed by hand from their best.pt,
    and each member's own accuracy beside it; members in the wrong order are refused."""
    from helpers import TINY, invoke
    from mmtm.loaders.errors import UserError
    from mmtm.loaders.factory import two_view_loader
    from mmtm.training.checkpoint import load_checkpoint
    from mmtm.methods import ume
    from mmtm.science.network import SingleViewNet

    for view in (0, 6):
        r = invoke("train", "--data", synthetic_data, "--out", tmp_path / f"sv{view}", "--epochs", 2, *TINY,
                   "--single-view", view)
        assert r.exit_code == 0, r.output
    got = ume.ensemble_accuracy(tmp_path / "sv0", tmp_path / "sv6")
    nets = []
    for m, view in enumerate((0, 6)):
        nets.append(SingleViewNet(3, width=4, slot=m))
        nets[m].load_state_dict(load_checkpoint(tmp_path / f"sv{view}" / "best.pt")["model"])
        nets[m].eval()
    right = right0 = right1 = n = 0
    with torch.no_grad():
        for b in two_view_loader(str(synthetic_data), "test", views=(0, 6), batch_size=5, train=False, seed=0,
                                 backend="torch", device=torch.device("cpu"), num_threads=0):
            l0, l1 = nets[0](b.view0, b.view1)[0], nets[1](b.view0, b.view1)[0]
            right += int((((l0 + l1) / 2).argmax(1) == b.label).sum())
            right0 += int((l0.argmax(1) == b.label).sum())
            right1 += int((l1.argmax(1) == b.label).sum())
            n += len(b.label)
    assert got["n"] == n == 9
    assert (got["acc"], got["acc_m0"], got["acc_m1"]) == (right / n, right0 / n, right1 / n)
    with pytest.raises(UserError, match="single_view 1"):
        ume.ensemble_accuracy(tmp_path / "sv6", tmp_path / "sv0")
    r = invoke("ume", tmp_path / "sv0", tmp_path / "sv6", "--json")
    assert r.exit_code == 0 and json.loads(r.output) == got, r.output
