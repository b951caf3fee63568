"""Spectral maths on factors against direct dense computations."""

from __future__ import annotations

import torch

from alrt_core.ranks.spectral import frobenius_sq, grow, stable_rank, top_singular_value, truncated_svd


def factors(m: int, n: int, r: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=generator, dtype=torch.float64), torch.randn(r, n, generator=generator, dtype=torch.float64)


def test_frobenius_and_stable_rank_match_dense_norms():
    u, v = factors(30, 20, 8)
    w = u @ v
    torch.testing.assert_close(frobenius_sq(u, v), torch.linalg.matrix_norm(w) ** 2)
    sigma, _ = top_singular_value(u, v, iterations=100)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, ord=2))
    estimate, vector = stable_rank(u, v, iterations=100)
    expected = (torch.linalg.matrix_norm(w) ** 2 / torch.linalg.matrix_norm(w, ord=2) ** 2).item()
    assert abs(estimate - expected) < 1e-4 * expected
    # Warm start: one more iteration from the converged vector gives the same answer.
    again, _ = stable_rank(u, v, vector=vector, iterations=1)
    assert abs(again - expected) < 1e-3 * expected


def test_full_rank_resize_is_an_exact_identity_of_the_function():
    u, v = factors(12, 9, 6)
    resize, _ = truncated_svd(u, v, 6)
    torch.testing.assert_close(resize.u @ resize.v, u @ v)
    torch.testing.assert_close(u @ resize.a, resize.u)
    torch.testing.assert_close(resize.b @ v, resize.v)


def test_shrink_error_equals_the_discarded_singular_values():
    u, v = factors(40, 25, 10)
    resize, singular = truncated_svd(u, v, 4)
    torch.testing.assert_close(singular, torch.linalg.svdvals(u @ v)[:10])
    error = torch.linalg.matrix_norm(u @ v - resize.u @ resize.v)
    torch.testing.assert_close(error, singular[4:].square().sum().sqrt())
    assert resize.u.shape == (40, 4) and resize.v.shape == (4, 25)
    torch.testing.assert_close(torch.linalg.svdvals(resize.u), torch.linalg.svdvals(resize.v))  # sqrt split


def test_growth_leaves_the_output_unchanged_and_pads_state_with_zeros():
    u, v = factors(10, 7, 3)
    resize = grow(u, v, 2)
    assert resize.u.shape == (10, 5) and resize.v.shape == (5, 7)
    torch.testing.assert_close(resize.u @ resize.v, u @ v)
    momentum_u, momentum_v = torch.ones(10, 3, dtype=torch.float64), torch.ones(3, 7, dtype=torch.float64)
    assert resize.project_u_state(momentum_u).tolist() == [[1, 1, 1, 0, 0]] * 10
    assert resize.project_v_state(momentum_v)[3:].abs().sum() == 0


def test_projected_momentum_equals_momentum_accumulated_in_the_new_basis():
    """Replay a gradient history of W: momentum projected at the resize equals what the new factors collect."""
    u, v = factors(16, 11, 5)
    generator = torch.Generator().manual_seed(1)
    grads_w = [torch.randn(16, 11, generator=generator, dtype=torch.float64) for _ in range(6)]
    beta = 0.9

    def accumulate(u_: torch.Tensor, v_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m_u, m_v = torch.zeros_like(u_), torch.zeros_like(v_)
        for g in grads_w:  # dL/dU = G·Vᵀ, dL/dV = Uᵀ·G for W = U·V
            m_u = beta * m_u + g @ v_.T
            m_v = beta * m_v + u_.T @ g
        return m_u, m_v

    old_u_state, old_v_state = accumulate(u, v)
    resize, _ = truncated_svd(u, v, 5)
    new_u_state, new_v_state = accumulate(resize.u, resize.v)
    torch.testing.assert_close(resize.project_u_state(old_u_state), new_u_state)
    torch.testing.assert_close(resize.project_v_state(old_v_state), new_v_state)
