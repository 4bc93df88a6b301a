import math

import pytest
import torch

from mmtm.science import formulas


def test_mu_is_ratio_of_group_sums_and_skips_missing_grads():
    params = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0], [2.0]]), torch.tensor(5.0)]
    grads = [torch.tensor([0.5, 0.0]), None, torch.tensor(-2.0)]
    # Σ‖∇p‖² = 0.25 + 0 + 4 ;  Σ‖p‖² = 25 + 5 + 25
    assert float(formulas.mu(grads, params)) == pytest.approx(4.25 / 55)
    assert formulas.mu(grads, params).shape == ()
    assert float(formulas.mu([None, None, None], params)) == 0.0


def test_conditional_speed_is_log10_ratio_elementwise():
    s = formulas.conditional_speed(torch.tensor([10.0, 0.5], dtype=torch.float64),
                                   torch.tensor([0.1, 2.0], dtype=torch.float64))
    assert s.tolist() == pytest.approx([2.0, math.log10(0.25)])
    assert formulas.d_speed(0.3, -0.2) == pytest.approx(0.5)


@pytest.mark.parametrize("M_fusion, M_uni", [(0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (math.nan, 1.0)])
def test_conditional_speed_nan_cases(M_fusion, M_uni):
    assert math.isnan(float(formulas.conditional_speed(torch.tensor(M_fusion), torch.tensor(M_uni))))


def test_conditional_utilization_and_d_util():
    u_m1_m0 = formulas.conditional_utilization(0.80, 0.60)  # branch 0 owes a quarter of its accuracy to m1
    u_m0_m1 = formulas.conditional_utilization(0.90, 0.88)
    assert u_m1_m0 == pytest.approx(0.25)
    assert u_m0_m1 == pytest.approx(0.02 / 0.90)
    assert formulas.d_util(u_m1_m0, u_m0_m1) == pytest.approx(0.25 - 0.02 / 0.90)


def test_utilization_is_never_clipped():
    u = formulas.conditional_utilization(0.50, 0.60)  # flow off is better than fusion: A(f') > A(f)
    assert u == pytest.approx(-0.2)
    assert formulas.d_util(u, 0.9) == pytest.approx(-1.1)  # outside [-1, 1], reported as is
    assert formulas.conditional_utilization(0.2, 0.0) == pytest.approx(1.0)


def test_utilization_nan_when_accuracy_is_zero():
    assert math.isnan(formulas.conditional_utilization(0.0, 0.1))
    assert math.isnan(formulas.d_util(math.nan, 0.1))
