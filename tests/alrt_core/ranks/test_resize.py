"""Resizing a layer in place: function, shapes, and optimizer state projection or reset."""

from __future__ import annotations

import pytest
import torch
from model_helpers import train_a_few_steps

from alrt_core.model.factorized import FactorizedLinear
from alrt_core.ranks.resize import resize_layer
from alrt_core.training.muon import Muon


def trained_layer(rank: int = 6) -> tuple[FactorizedLinear, Muon]:
    torch.manual_seed(0)
    layer = FactorizedLinear(16, 12, rank=rank)
    optimizer = Muon(layer.parameters(), lr=0.02, momentum=0.9)
    train_a_few_steps(layer, optimizer)
    return layer, optimizer


def test_full_rank_svd_resize_keeps_the_function_and_projects_momentum():
    layer, optimizer = trained_layer()
    x = torch.randn(5, 16)
    before = layer(x)
    u_param = layer.U
    resize_layer(layer, 6, [optimizer])
    assert layer.U is u_param  # same rank: a no-op
    torch.testing.assert_close(layer(x), before)
    resize_layer(layer, 4, [optimizer])
    assert layer.U.shape == (12, 4) and layer.V.shape == (4, 16)
    assert [p.shape for p in optimizer.param_groups[0]["params"]] == [(12, 4), (4, 16)]
    assert optimizer.state[layer.U]["momentum_buffer"].shape == (12, 4)
    assert optimizer.state[layer.V]["momentum_buffer"].shape == (4, 16)
    layer(torch.randn(8, 16)).square().sum().backward()
    optimizer.step()  # the optimizer keeps working on the resized parameters


def test_growth_keeps_the_function_and_zero_state_for_new_components():
    layer, optimizer = trained_layer()
    x = torch.randn(5, 16)
    before = layer(x)
    resize_layer(layer, 9, [optimizer])
    torch.testing.assert_close(layer(x), before)
    assert optimizer.state[layer.U]["momentum_buffer"][:, 6:].abs().sum() == 0
    assert optimizer.state[layer.V]["momentum_buffer"][6:].abs().sum() == 0


@pytest.mark.parametrize("method", ["svd", "truncate"])
def test_reset_policy_zeroes_state(method):
    layer, optimizer = trained_layer()
    resize_layer(layer, 3, [optimizer], method=method, on_resize="reset")
    assert optimizer.state[layer.U]["momentum_buffer"].abs().sum() == 0
    assert layer.rank == 3


def test_truncate_keeps_leading_components_verbatim():
    layer, optimizer = trained_layer()
    u, v = layer.U.detach().clone(), layer.V.detach().clone()
    resize_layer(layer, 2, [optimizer], method="truncate")
    torch.testing.assert_close(layer.U.detach(), u[:, :2])
    torch.testing.assert_close(layer.V.detach(), v[:2])


def test_bad_resize_requests():
    layer, optimizer = trained_layer()
    with pytest.raises(ValueError, match="outside"):
        resize_layer(layer, 13, [optimizer])
    with pytest.raises(ValueError, match="only factorised"):
        resize_layer(FactorizedLinear(4, 4, rank=None), 2, [])


def test_adam_moments_are_carried_first_exactly_second_non_negative():
    torch.manual_seed(0)
    layer = FactorizedLinear(16, 12, rank=6)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    for _ in range(3):
        layer(torch.randn(8, 16)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    old_u = layer.U
    exp_avg = optimizer.state[old_u]["exp_avg"].clone()
    resize_layer(layer, 6 + 2, [optimizer])  # growth: the first 6 components keep their moments verbatim
    state = optimizer.state[layer.U]
    torch.testing.assert_close(state["exp_avg"][:, :6], exp_avg)
    assert state["exp_avg_sq"].shape == (12, 8) and bool((state["exp_avg_sq"] >= 0).all())
    assert int(state["step"]) == 3
    resize_layer(layer, 3, [optimizer])
    assert optimizer.state[layer.V]["exp_avg_sq"].shape == (3, 16) and bool((optimizer.state[layer.V]["exp_avg_sq"] >= 0).all())
    layer(torch.randn(8, 16)).square().sum().backward()
    optimizer.step()
