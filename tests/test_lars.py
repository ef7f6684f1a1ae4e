import torch
from torch import nn

from ssprl_d2.solver import LARS, pretrain_param_groups


def test_lars_step_matches_larc_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    w.grad = torch.randn(4, 3)
    w0, g0 = w.detach().clone(), w.grad.clone()
    lr, wd, trust = 0.5, 1e-4, 0.001
    opt = LARS([w], lr=lr, momentum=0.9, weight_decay=wd, trust_coefficient=trust)
    opt.step()
    local = trust * w0.norm() / (g0.norm() + wd * w0.norm() + 1e-8)
    expected = w0 - lr * local * (g0 + wd * w0)  # first momentum step = the gradient itself
    torch.testing.assert_close(w.detach(), expected)
    assert opt.param_groups[0]["weight_decay"] == wd  # restored after the step


def test_excluded_group_and_missing_grads():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    groups = pretrain_param_groups(model, 0.1, 1e-4, exclude_bn_bias=True)
    assert len(groups) == 2 and groups[1]["lars_exclude"] and groups[1]["weight_decay"] == 0
    assert len(groups[0]["params"]) == 1  # only the Linear weight is adapted
    opt = LARS(groups, lr=0.1, momentum=0.0, weight_decay=1e-4)
    bias = model[0].bias
    bias.grad = torch.ones_like(bias)
    before_bias, before_w = bias.detach().clone(), model[0].weight.detach().clone()
    opt.step()
    # Excluded: plain SGD (no trust ratio, no decay). No gradient: untouched.
    torch.testing.assert_close(bias.detach(), before_bias - 0.1)
    torch.testing.assert_close(model[0].weight.detach(), before_w)
