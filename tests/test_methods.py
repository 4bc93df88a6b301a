"""mmtm.methods: the arithmetic of OGM-GE, G-Blending, ModDrop and PMR pinned on tiny hand-made tensors.

Expected values are worked out by hand (math, not the module under test) in each test."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmtm.methods import g_blending, moddrop, ogm_ge, pmr
from mmtm.network import ResNet18, TwoViewMMTMNet

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
    from mmtm.config import resolve, to_dict
    d = to_dict(resolve("paper", epochs=epochs))
    assert (d["ogm_end_epoch"], d["pmr_end_epoch"]) == (ogm_end, pmr_end)
    assert (d["ogm_end_fraction"], d["pmr_end_fraction"]) == (0.51, 71 / 130)


def test_window_end_epochs_and_fractions_resolve_one_way(tmp_path):
    import json
    from mmtm.config import from_dict, resolve, to_dict
    from mmtm.registry import make_policy
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
    from mmtm.network import task_loss

    l0, l1, y = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    # ŷ = [[1, 0], [1, 0]]: CE = (−log(e/(e+1)) − log(1/(e+1)))/2
    e = math.e
    assert task_loss("fused", l0, l1, y).item() == pytest.approx((-math.log(e / (e + 1)) - math.log(1 / (e + 1))) / 2)
    e2 = math.e ** 2  # each head alone: logits 2 vs 0, or a tie
    assert task_loss("heads", l0, l1, y).item() == pytest.approx(
        (-math.log(e2 / (e2 + 1)) + math.log(2)) / 2 + (math.log(2) - math.log(1 / (e2 + 1))) / 2)


def test_each_policy_defaults_to_its_authors_task_loss_and_the_flag_overrides_it():
    from mmtm.config import resolve

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
    from mmtm.config import resolve
    from mmtm.hardware import Compute, Distributed
    from mmtm.policy import EpochContext
    from mmtm.training import build_trainer

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
    from mmtm.evaluate import evaluate
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
    from mmtm.hardware import Compute, Distributed
    from mmtm.policy import EpochContext

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
