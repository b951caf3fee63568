"""Muon, parameter grouping and the LR schedule."""

from __future__ import annotations

import pytest
import torch

from alrt_core.config import ModelConfig, TrainConfig
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.training import muon as muon_module
from alrt_core.training.muon import Muon, orthogonalize, orthogonalize_all
from alrt_core.training.optimizers import build_optimizers, split_parameters
from alrt_core.training.schedule import Schedule, muon_momentum


def test_orthogonalize_pushes_singular_values_towards_one():
    torch.manual_seed(0)
    matrix = torch.randn(64, 16) @ torch.diag(torch.logspace(-1, 1, 16))  # condition number ~100+
    singular = torch.linalg.svdvals(orthogonalize(matrix, steps=5).float())
    assert singular.min() > 0.4 and singular.max() < 1.25  # the quintic iteration aims at a band around 1
    assert orthogonalize(matrix).shape == (64, 16)


def test_matrices_of_one_shape_are_orthogonalised_together_as_each_alone():
    torch.manual_seed(0)
    shapes = [(32, 8), (8, 32), (32, 8), (16, 16), (32, 8), (8, 32)]
    updates = [torch.randn(*shape) for shape in shapes]
    together = orthogonalize_all(updates, steps=5, bf16=False)
    assert [tuple(t.shape) for t in together] == shapes
    for update, batched in zip(updates, together, strict=True):
        torch.testing.assert_close(batched, orthogonalize(update, 5, bf16=False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (3, 24, 96), (12, 24)])
def test_gram_form_of_newton_schulz_gives_the_plain_iterates(shape):
    torch.manual_seed(0)
    rows, cols = shape[-2:]
    short = min(rows, cols)
    # Ill-conditioned (singular values 1e-3..1), as momentum buffers are: the Gram form's left factor grows like
    # 1/sigma there, which is where it could drift from the plain iteration.
    spectrum = torch.diag(torch.logspace(-3, 0, short))
    left = torch.linalg.qr(torch.randn(*shape[:-2], rows, short, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(*shape[:-2], cols, short, dtype=torch.float64))[0]
    matrix = left @ spectrum.double() @ right.mT
    wide = matrix.mT if rows > cols else matrix
    x = wide / torch.linalg.matrix_norm(wide, keepdim=True)
    exact_iterates = muon_module._newton_schulz(x, 5)  # fp64: the iteration without rounding
    plain = muon_module._newton_schulz(x.float(), 5)
    gram = muon_module._gram_newton_schulz(x.float(), 5)
    # fp32 rounding moves the Gram form further (its left factor carries 1/sigma) but by < 0.1% of the entries'
    # size, against the ±30% by which five quintic steps leave singular values away from 1.
    torch.testing.assert_close(gram.double(), exact_iterates, atol=5e-4 * exact_iterates.abs().max().item(), rtol=0)
    torch.testing.assert_close(plain.double(), exact_iterates, atol=1e-5, rtol=0)
    matrix = matrix.float()
    x = (matrix.mT if rows > cols else matrix) / (torch.linalg.matrix_norm(matrix, keepdim=True) + 1e-7)
    uses_gram = max(rows, cols) >= muon_module.GRAM_MIN_ASPECT * short
    expected = muon_module._gram_newton_schulz(x, 5) if uses_gram else muon_module._newton_schulz(x, 5)
    torch.testing.assert_close(orthogonalize(matrix, 5, bf16=False), expected.mT if rows > cols else expected,
                               atol=0, rtol=0)


def test_muon_step_with_nesterov_and_weight_decay():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 4))
    before = weight.detach().clone()
    weight.grad = torch.randn(8, 4)
    optimizer = Muon([weight], lr=0.1, momentum=0.9, weight_decay=0.5)
    optimizer.step()
    buffer = optimizer.state[weight]["momentum_buffer"]
    torch.testing.assert_close(buffer, weight.grad)
    expected_update = orthogonalize(weight.grad + 0.9 * buffer).float() * (8 / 4) ** 0.5
    # The update is computed in bf16, so compare at bf16 resolution.
    torch.testing.assert_close(weight.detach(), before * (1 - 0.1 * 0.5) - 0.1 * expected_update, atol=2e-3, rtol=1e-2)


def test_every_parameter_is_in_exactly_one_group():
    config = ModelConfig(vocab_size=50, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1, seq_len=8, tie_embeddings=False)
    model = GPT(config, layer_ranks=uniform_ranks(config, 4))
    groups = split_parameters(model)
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert len(groups["matrix"]) == 2 * 6 * 2  # U and V of 6 projections in 2 blocks
    assert all(p.ndim == 2 for p in groups["matrix"])
    optimizers = build_optimizers(model, TrainConfig(max_steps=1))
    assert isinstance(optimizers[0], Muon)
    assert {group["name"] for group in optimizers[1].param_groups} == {"embed", "scalar", "head"}


def test_schedule_warmup_flat_warmdown_by_steps():
    schedule = Schedule(warmup_steps=4, warmdown_frac=0.5, max_steps=100, max_seconds=None)
    assert [schedule.lr_scale(s, 0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.lr_scale(40, 0) == 1.0
    assert schedule.lr_scale(75, 0) == pytest.approx(0.5)
    assert schedule.lr_scale(99, 0) == pytest.approx(0.02)
    assert schedule.finished(99, 0) is None and schedule.finished(100, 0) == "max_steps"


def test_schedule_by_wallclock_and_whichever_ends_first():
    schedule = Schedule(warmup_steps=0, warmdown_frac=0.2, max_steps=None, max_seconds=60.0)
    assert schedule.lr_scale(10, 30.0) == 1.0
    assert schedule.lr_scale(10, 54.0) == pytest.approx(0.5)
    assert schedule.finished(10**6, 59.0) is None and schedule.finished(1, 60.0) == "max_minutes"
    both = Schedule(warmup_steps=0, warmdown_frac=0.5, max_steps=10, max_seconds=60.0)
    assert both.progress(5, 45.0) == 0.75 and both.finished(10, 1.0) == "max_steps"


def test_muon_momentum_warmup():
    assert muon_momentum(0, 0.85, 0.95, 100) == 0.85
    assert muon_momentum(50, 0.85, 0.95, 100) == pytest.approx(0.90)
    assert muon_momentum(500, 0.85, 0.95, 100) == 0.95
